from django.contrib import admin

from inference.models import GenerationJob, LocalModel


@admin.register(LocalModel)
class LocalModelAdmin(admin.ModelAdmin):
    list_display = ("name", "format", "architecture", "parameter_count", "quantization", "context_length", "backend")
    search_fields = ("name", "architecture")
    readonly_fields = ("path", "format", "architecture", "parameter_count", "quantization", "context_length",
                       "size_bytes", "chat_template_source", "metadata", "created_at")


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = ("id", "model_name", "owner", "status", "backend", "prompt_tokens", "completion_tokens",
                    "tokens_per_second", "created_at")
    list_filter = ("status", "backend")
    readonly_fields = [f.name for f in GenerationJob._meta.fields]
