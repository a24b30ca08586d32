from django.contrib import admin

from inference.audit import audit_record
from inference.models import GenerationJob, LocalModel


class AuditedAdmin(admin.ModelAdmin):
    """Changes made in the Django admin join Hearth's audit trail (inference/audit.py) as well as the admin's own
    history: `<audit_name>.create|change|delete`, via "Django admin", with the admin's description of the change."""

    audit_name = ""

    def _audit(self, request, verb: str, obj, message="") -> None:
        audit_record(request.user, f"{self.audit_name}.{verb}", str(obj), via="Django admin",
                     change=str(message)[:500])

    def log_addition(self, request, obj, message):
        self._audit(request, "create", obj, message)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        self._audit(request, "change", obj, message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            self._audit(request, "delete", obj)
        return super().log_deletions(request, queryset)


@admin.register(LocalModel)
class LocalModelAdmin(AuditedAdmin):
    audit_name = "model"
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
