"""Admin: sites (keys, prompts, model settings), and read-only conversations."""

from __future__ import annotations

from django.contrib import admin

from conversations.models import Conversation, Message, Site, StatusChange, Ticket


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["name", "public_key", "model", "created_at"]
    search_fields = ["name", "public_key"]
    readonly_fields = ["public_key", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "public_key", "allowed_origins", "created_at"]}),
        ("Assistant", {"fields": ["system_prompt", "model", "temperature", "max_tokens"]}),
        (
            "Moderation",
            {
                "fields": [
                    "moderation_mode",
                    "moderation_provider",
                    "moderation_fail_open",
                    "flagged_input_reply",
                    "self_harm_reply",
                    "secrets_reply",
                ]
            },
        ),
        (
            "Handoff to a person",
            {"fields": ["handoff_topics", "handoff_notice", "bot_answers_while_waiting"]},
        ),
        ("Widget", {"fields": ["widget_title", "widget_colour", "widget_greeting"]}),
    ]


class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = ["seq", "role", "status", "text", "moderation", "moderation_categories",
              "handoff_reason", "prompt_tokens", "completion_tokens",
              "time_to_first_token_ms", "created_at"]  # fmt: skip
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["seq"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class StatusChangeInline(admin.TabularInline):
    model = StatusChange
    fields = ["seq", "status", "reason", "actor", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "site", "status", "handoff_requested", "handoff_reason",
                    "moderation_flagged", "updated_at"]  # fmt: skip
    list_filter = ["status", "handoff_requested", "moderation_flagged", "site"]
    search_fields = ["messages__text"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "site", "visitor_hash", "status", "handoff_requested",
                       "handoff_reason", "moderation_flagged", "seq", "created_at",
                       "updated_at"]  # fmt: skip
    inlines = [StatusChangeInline, MessageInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("site")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ["subject", "status", "priority", "reason", "assignee", "created_at"]
    list_filter = ["status", "priority"]
    search_fields = ["subject"]
    raw_id_fields = ["conversation"]
