from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group

from inference.admin import AuditedAdmin
from webui.models import Conversation, Message, SharedConversation, Upload


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("role", "content", "parent", "job", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("parent", "job")
    fk_name = "conversation"


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "model", "updated_at")
    search_fields = ("title", "owner__username")
    raw_id_fields = ("leaf",)
    inlines = [MessageInline]


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ("filename", "name", "owner", "status", "received", "size", "created_at")
    list_filter = ("status",)
    readonly_fields = ("received",)


@admin.register(SharedConversation)
class SharedConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "token", "created_at", "revoked_at")
    search_fields = ("title", "owner__username")
    raw_id_fields = ("conversation",)
    readonly_fields = ("token", "snapshot", "created_at")


# Users and groups: Django's own admin pages, with their changes in Hearth's audit trail too.
admin.site.unregister(get_user_model())
admin.site.unregister(Group)


@admin.register(get_user_model())
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    audit_name = "user"


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    audit_name = "group"
