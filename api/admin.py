from django.contrib import admin, messages
from django.utils.html import format_html

from api.models import ApiKey
from api.selectors import keys_with_usage
from api.services import key_create, key_revoke


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "owner", "created_at", "last_used_at", "revoked_at", "requests_per_minute",
                    "max_concurrent_jobs", "tokens_in", "tokens_out")
    list_filter = ("revoked_at",)
    readonly_fields = ("prefix", "secret_hash", "created_at", "last_used_at", "revoked_at", "tokens_in", "tokens_out")
    fields = ("owner", "name", "requests_per_minute", "max_concurrent_jobs", "prefix", "secret_hash", "created_at",
              "last_used_at", "revoked_at", "tokens_in", "tokens_out")
    search_fields = ("prefix", "name", "owner__username")
    actions = ("revoke_keys",)

    def get_queryset(self, request):
        return keys_with_usage()

    @admin.display(description="tokens in")
    def tokens_in(self, key):
        return getattr(key, "prompt_tokens", 0)

    @admin.display(description="tokens out")
    def tokens_out(self, key):
        return getattr(key, "completion_tokens", 0)

    def get_readonly_fields(self, request, obj=None):
        # A key is issued with its secret (save_model); an existing key's owner does not change.
        return (*self.readonly_fields, "owner") if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        key, text = key_create(request.user, obj.owner, name=obj.name)
        ApiKey.objects.filter(pk=key.pk).update(requests_per_minute=obj.requests_per_minute,
                                                max_concurrent_jobs=obj.max_concurrent_jobs)
        obj.pk = key.pk
        messages.warning(request, format_html("The new key, shown only this once: <code>{}</code>", text))

    @admin.action(description="Revoke the selected keys")
    def revoke_keys(self, request, queryset):
        for key in queryset:
            key_revoke(request.user, key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")
