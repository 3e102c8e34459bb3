"""Admin: sites and articles (superusers only), conversations as read-only transcripts,
and tickets.

Agents (staff in the "Agents" group, migration 0004) read conversations and work
tickets here; the live work happens in the agent console (docs/agent-console.md).
Everything a visitor, the model or an agent wrote is rendered through autoescaping
templates or format_html, never marked safe.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from conversations import exports
from conversations.knowledge import importer
from conversations.knowledge.store import (
    MAX_BODY_CHARS,
    MAX_TAGS,
    article_delete,
    article_save,
)
from conversations.models import (
    Article,
    Conversation,
    InternalNote,
    Message,
    Site,
    StatusChange,
    Ticket,
)
from conversations.serializers import agent_name


class SuperusersOnly:
    """Admin permissions for administrators only, whatever a group is ever given."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser


@admin.register(Site)
class SiteAdmin(SuperusersOnly, admin.ModelAdmin):
    list_display = ["name", "public_key", "model", "created_at"]
    search_fields = ["name", "public_key"]
    readonly_fields = ["public_key", "created_at"]
    # `prompt_canary` is deliberately in no fieldset, list or search: it is a secret
    # whose appearance in an answer proves the prompt leaked.
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
        (
            "Limits",
            {
                "description": "Empty takes the deployment's default; 0 means no limit.",
                "fields": [
                    "rate_messages_per_minute",
                    "rate_conversations_per_hour",
                    "rate_concurrent_replies",
                    "rate_tokens_per_day",
                ],
            },
        ),
    ]


def _person(user: Any) -> str:
    # Readonly display methods render None as "None"; the admin's empty marker instead.
    return agent_name(user) or "-"


def _download(content: bytes, *, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _stamp() -> str:
    return timezone.now().strftime("%Y%m%d-%H%M%S")


def transcript_json_response(conversations: QuerySet[Conversation]) -> HttpResponse:
    return _download(
        exports.export_json(conversations.select_related("site", "assigned_agent")),
        filename=f"transcripts-{_stamp()}.json",
        content_type="application/json",
    )


def transcript_csv_response(conversations: QuerySet[Conversation]) -> HttpResponse:
    text = exports.export_csv(conversations.select_related("site", "assigned_agent"))
    # With a byte-order mark, Excel reads the file as UTF-8 instead of the local code page.
    return _download(
        text.encode("utf-8-sig"),
        filename=f"transcripts-{_stamp()}.csv",
        content_type="text/csv; charset=utf-8",
    )


def _message_totals(expression: Any) -> Subquery:
    """A per-conversation aggregate over its messages, as a subquery.

    A subquery, not a join: the changelist's search over messages__text joins the
    messages again, which would multiply a joined SUM by the number of matches.
    """
    return Subquery(
        Message.objects.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(total=expression)
        .values("total"),
        output_field=IntegerField(),
    )


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["short_id", "site", "status", "handoff_requested", "handoff_reason",
                    "moderation_flagged", "message_count", "tokens", "updated_at",
                    "assigned_agent_name"]  # fmt: skip
    list_filter = [
        "status",
        "handoff_requested",
        "moderation_flagged",
        "site",
        # Only people who hold a conversation: not a directory of every account.
        ("assigned_agent", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["messages__text"]
    date_hierarchy = "created_at"
    ordering = ["-updated_at"]
    # Display methods, not the raw foreign keys: Django would link those to the site
    # and user admins, which agents may not open.
    fields = ["id", "site_name", "status", "assigned_agent_name", "handoff_requested",
              "handoff_reason", "moderation_flagged", "message_count", "tokens",
              "visitor_hash", "seq", "created_at", "updated_at"]  # fmt: skip
    readonly_fields = fields
    actions = ["export_json", "export_csv"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return (
            super()
            .get_queryset(request)
            .select_related("site", "assigned_agent")
            .annotate(
                message_count=Coalesce(_message_totals(Count("*")), Value(0)),
                token_total=Coalesce(
                    _message_totals(
                        Sum(
                            Coalesce("prompt_tokens", Value(0))
                            + Coalesce("completion_tokens", Value(0))
                        )
                    ),
                    Value(0),
                ),
            )
        )

    # A transcript is a record: nobody edits or deletes it here. Agents answer in the
    # console, which checks change_conversation itself.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Conversation", ordering="created_at")
    def short_id(self, obj: Conversation) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="Site", ordering="site__name")
    def site_name(self, obj: Conversation) -> str:
        return obj.site.name

    @admin.display(description="Assigned agent", ordering="assigned_agent__username")
    def assigned_agent_name(self, obj: Conversation) -> str:
        return _person(obj.assigned_agent if obj.assigned_agent_id else None)

    @admin.display(description="Messages", ordering="message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count

    @admin.display(description="Tokens", ordering="token_total")
    def tokens(self, obj: Conversation) -> int:
        return obj.token_total

    @admin.action(description="Export transcript (JSON)", permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        return transcript_json_response(queryset)

    @admin.action(description="Export transcript (CSV)", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        return transcript_csv_response(queryset)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Conversation | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self.transcript_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def transcript_context(self, request: HttpRequest, conversation: Conversation) -> dict:
        """The thread (messages and status changes in seq order), notes and tickets,
        as plain values for the change form's template to escape."""
        rows: list[Message | StatusChange] = [
            *Message.objects.filter(conversation=conversation).select_related("author"),
            *StatusChange.objects.filter(conversation=conversation).select_related("actor"),
        ]
        rows.sort(key=lambda row: row.seq)
        thread = [
            _message_entry(row) if isinstance(row, Message) else _change_entry(row) for row in rows
        ]
        may_see_tickets = request.user.has_perm("conversations.view_ticket")
        tickets = [
            {
                "subject": ticket.subject,
                "status": ticket.get_status_display(),
                "priority": ticket.get_priority_display(),
                "assignee": agent_name(ticket.assignee) if ticket.assignee_id else None,
                "url": reverse("admin:conversations_ticket_change", args=[ticket.pk])
                if may_see_tickets
                else None,
            }
            for ticket in conversation.tickets.select_related("assignee").order_by("created_at")
        ]
        notes = [
            {
                "author": agent_name(note.author) if note.author_id else None,
                "created_at": note.created_at,
                "ticket": note.ticket.subject if note.ticket_id else None,
                "text": note.text,
            }
            for note in conversation.notes.select_related("author", "ticket")
        ]
        return {"thread": thread, "tickets": tickets, "notes": notes}


def _message_entry(message: Message) -> dict[str, Any]:
    has_usage = message.prompt_tokens is not None or message.completion_tokens is not None
    return {
        "kind": "message",
        "seq": message.seq,
        "role": message.role,
        "role_label": message.get_role_display(),
        "created_at": message.created_at,
        "status": message.status,
        "text": message.text,
        "author": agent_name(message.author) if message.author_id else None,
        "error_code": message.error_code,
        "moderation": message.moderation,
        "categories": exports.category_list(message.moderation_categories),
        "moderation_provider": message.moderation_provider,
        "handoff_reason": message.handoff_reason if message.handoff_requested else "",
        "model": message.model,
        "usage": {
            "prompt": message.prompt_tokens or 0,
            "completion": message.completion_tokens or 0,
            "total": (message.prompt_tokens or 0) + (message.completion_tokens or 0),
            "estimated": message.usage_estimated,
        }
        if has_usage
        else None,
    }


def _change_entry(change: StatusChange) -> dict[str, Any]:
    return {
        "kind": "status",
        "seq": change.seq,
        "created_at": change.created_at,
        "status": change.status,
        "status_label": change.get_status_display(),
        "reason": change.reason,
        "actor": agent_name(change.actor) if change.actor_id else None,
    }


class InternalNoteInline(admin.TabularInline):
    model = InternalNote
    fk_name = "ticket"
    fields = ["text", "author_name", "created_at"]
    readonly_fields = ["author_name", "created_at"]
    extra = 1
    can_delete = False
    verbose_name = "internal note"
    verbose_name_plural = "Internal notes (staff only, never shown to the visitor)"

    # Notes are a record of who said what: add new ones, never rewrite old ones.
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Author")
    def author_name(self, note: InternalNote) -> str:
        # A new note's author is whoever saves it (TicketAdmin.save_formset).
        if note.pk is None:
            return "you"
        return _person(note.author if note.author_id else None)


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ["subject", "status", "priority", "reason", "assignee_name",
                    "conversation_link", "created_at", "updated_at"]  # fmt: skip
    list_filter = ["status", "priority", ("assignee", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["subject", "reason"]
    list_select_related = ["assignee"]
    # The queue's order: open before pending before resolved, most urgent, oldest.
    ordering = ["status", "-priority", "created_at"]
    fieldsets = [
        (None, {"fields": ["subject", "reason", "conversation_link"]}),
        ("Work", {"fields": ["status", "priority", "assignee", "resolved_at"]}),
        ("Dates", {"fields": ["created_at", "updated_at"]}),
    ]
    readonly_fields = ["subject", "reason", "conversation_link", "resolved_at", "created_at",
                       "updated_at"]  # fmt: skip
    inlines = [InternalNoteInline]
    actions = ["assign_to_me", "resolve", "export_json", "export_csv"]

    # Tickets come from handoffs, which also move the conversation and tell the
    # console's queue; a ticket made here would do neither.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def formfield_for_foreignkey(self, db_field, request: HttpRequest, **kwargs: Any):
        if db_field.name == "assignee":
            # Only staff can work a ticket; the choice list shows nobody else.
            model = db_field.remote_field.model
            kwargs["queryset"] = model._default_manager.filter(
                is_staff=True, is_active=True
            ).order_by("username")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Assignee", ordering="assignee__username")
    def assignee_name(self, ticket: Ticket) -> str:
        return _person(ticket.assignee if ticket.assignee_id else None)

    @admin.display(description="Conversation")
    def conversation_link(self, ticket: Ticket) -> str:
        url = reverse("admin:conversations_conversation_change", args=[ticket.conversation_id])
        return format_html('<a href="{}">{}</a>', url, str(ticket.conversation_id)[:8])

    def save_model(self, request: HttpRequest, obj: Ticket, form: Any, change: bool) -> None:
        # resolved_at follows the status, as when the console resolves a ticket.
        if obj.status == Ticket.Status.RESOLVED and obj.resolved_at is None:
            obj.resolved_at = timezone.now()
        elif obj.status != Ticket.Status.RESOLVED:
            obj.resolved_at = None
        super().save_model(request, obj, form, change)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not InternalNote:
            super().save_formset(request, form, formset, change)
            return
        ticket = form.instance
        for note in formset.save(commit=False):
            if note.pk is None:
                # The author is whoever is logged in, never a form value.
                note.author = request.user
                note.conversation_id = ticket.conversation_id
            note.save()
        formset.save_m2m()

    @admin.action(description="Assign to me", permissions=["change"])
    def assign_to_me(self, request: HttpRequest, queryset: QuerySet[Ticket]) -> None:
        # update() skips auto_now, so updated_at is set here.
        count = queryset.update(assignee=request.user, updated_at=timezone.now())
        self.message_user(request, f"Assigned {count} ticket(s) to you.", messages.SUCCESS)

    @admin.action(description="Resolve", permissions=["change"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Ticket]) -> None:
        now = timezone.now()
        # Already resolved tickets keep the time they were resolved.
        count = queryset.exclude(status=Ticket.Status.RESOLVED).update(
            status=Ticket.Status.RESOLVED, resolved_at=now, updated_at=now
        )
        self.message_user(request, f"Resolved {count} ticket(s).", messages.SUCCESS)

    def has_export_permission(self, request: HttpRequest) -> bool:
        # An export is the conversations' transcripts: seeing tickets is not enough.
        return self.has_view_permission(request) and request.user.has_perm(
            "conversations.view_conversation"
        )

    @admin.action(description="Export transcript (JSON)", permissions=["export"])
    def export_json(self, request: HttpRequest, queryset: QuerySet[Ticket]) -> HttpResponse:
        return transcript_json_response(_ticket_conversations(queryset))

    @admin.action(description="Export transcript (CSV)", permissions=["export"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Ticket]) -> HttpResponse:
        return transcript_csv_response(_ticket_conversations(queryset))


def _ticket_conversations(tickets: QuerySet[Ticket]) -> QuerySet[Conversation]:
    # Several tickets of one conversation export it once.
    return Conversation.objects.filter(
        pk__in=tickets.order_by().values("conversation_id")
    ).order_by("created_at")


class ArticleForm(forms.ModelForm):
    url = forms.URLField(
        max_length=Article._meta.get_field("url").max_length, required=False, assume_scheme="https"
    )

    class Meta:
        model = Article
        fields = ["site", "title", "body", "url", "tags", "published"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        # URLField also takes ftp://; the widget links to these for visitors.
        if url and not url.lower().startswith(("http://", "https://")):
            raise forms.ValidationError("The url must start with http:// or https://")
        return url

    def clean_body(self) -> str:
        body = self.cleaned_data["body"]
        if len(body) > MAX_BODY_CHARS:
            raise forms.ValidationError(f"At most {MAX_BODY_CHARS:,} characters")
        return body

    def clean_tags(self) -> list[str]:
        tags = self.cleaned_data["tags"] or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise forms.ValidationError('Tags must be a list of strings, e.g. ["billing"]')
        if len(tags) > MAX_TAGS:
            raise forms.ValidationError(f"At most {MAX_TAGS} tags")
        return tags


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one field (the pattern of Django's file-upload docs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[UploadedFile]:
        single_clean = super().clean
        items = list(data) if isinstance(data, list | tuple) else [data] if data else []
        if not items:
            # The docs' version returns [] here, so a required field took no files.
            single_clean(None, initial)
            return []
        return [single_clean(item, initial) for item in items]


class ArticleImportForm(forms.Form):
    site = forms.ModelChoiceField(queryset=Site.objects.order_by("name"))
    files = MultipleFileField(
        # An empty file is reported as such with the others, not refused with the form.
        allow_empty_file=True,
        help_text=f"Markdown (.md), text (.txt) or HTML (.html) files, each at most 1 MB, "
        f"up to {settings.DATA_UPLOAD_MAX_NUMBER_FILES} at a time. An article whose url "
        "(or file name) was imported before is updated.",
    )
    published = forms.BooleanField(
        required=False, initial=True, help_text="Unpublished articles are never used in answers."
    )


def _parse_upload(upload: UploadedFile) -> importer.Parsed | importer.Rejected:
    # A large file is refused by its size, without reading it into memory.
    name = upload.name or "upload"
    return importer.check_size(name, upload.size or 0) or importer.parse_file(name, upload.read())


def _preview(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


@admin.register(Article)
class ArticleAdmin(SuperusersOnly, admin.ModelAdmin):
    """Articles are what the bot answers from: administrators only, like sites. Saving
    goes through article_save, so an edit is re-chunked and re-indexed at once."""

    form = ArticleForm
    list_display = ["title", "site", "published", "url", "updated_at", "chunk_count"]
    list_filter = ["site", "published"]
    search_fields = ["title", "body"]
    list_select_related = ["site"]
    fieldsets = [
        (None, {"fields": ["site", "title", "body", "url", "tags", "published"]}),
        ("Import", {"fields": ["source", "created_at", "updated_at"]}),
        ("Chunks (what retrieval searches)", {"fields": ["chunk_preview"]}),
    ]
    # `source` is the import's key: editing it would detach the article from its file.
    readonly_fields = ["source", "created_at", "updated_at", "chunk_preview"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Article]:
        return super().get_queryset(request).annotate(chunk_total=Count("chunks"))

    @admin.display(description="Chunks", ordering="chunk_total")
    def chunk_count(self, article: Article) -> int:
        return article.chunk_total

    @admin.display(description="Chunks")
    def chunk_preview(self, article: Article) -> str:
        if article.pk is None:
            return "-"
        chunks = article.chunks.order_by("ordinal").values_list("heading", "text")
        if not chunks:
            return "None (an unpublished article has none)" if not article.published else "None"
        return format_html(
            "<ol>{}</ol>",
            format_html_join(
                "",
                "<li><strong>{}</strong><br>{}</li>",
                ((heading or "(no heading)", _preview(text)) for heading, text in chunks),
            ),
        )

    def save_model(self, request: HttpRequest, obj: Article, form: Any, change: bool) -> None:
        article_save(obj)

    # Through the store, which keeps the site's word statistics in step with its chunks.
    def delete_model(self, request: HttpRequest, obj: Article) -> None:
        article_delete(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Article]) -> None:
        for article in queryset:
            article_delete(article)

    def get_urls(self) -> list[URLPattern]:
        # Before the default URLs, whose <path:object_id>/ would swallow "import/".
        return [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="conversations_article_import",
            ),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        # admin_view only checks for staff: agents are staff too.
        if not self.has_add_permission(request):
            raise PermissionDenied
        report = None
        if request.method == "POST":
            form = ArticleImportForm(request.POST, request.FILES)
            if form.is_valid():
                site, published = form.cleaned_data["site"], form.cleaned_data["published"]
                report = importer.import_parsed(
                    site,
                    (_parse_upload(upload) for upload in form.cleaned_data["files"]),
                    published=published,
                )
                form = ArticleImportForm(initial={"site": site, "published": published})
        else:
            form = ArticleImportForm()
        context = {
            **self.admin_site.each_context(request),
            "title": "Import articles",
            "opts": self.opts,
            "form": form,
            "report": report,
        }
        return TemplateResponse(request, "admin/conversations/article/import.html", context)
