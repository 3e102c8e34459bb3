"""Sites, conversations, their messages and status changes, and tickets."""

from __future__ import annotations

import re
import secrets
import uuid

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


def new_site_key() -> str:
    return "site_" + secrets.token_urlsafe(18)


def validate_colour(value: str) -> None:
    # Only #rgb / #rrggbb: the value is written into the widget's CSS.
    if not re.fullmatch(r"#(?:[0-9a-fA-F]{3}){1,2}", value or ""):
        raise ValidationError("Use a hex colour like #1f4e79")


def new_canary() -> str:
    return "sb-canary-" + secrets.token_hex(8)


def validate_topics(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError('Handoff topics must be a list of strings, e.g. ["refund", "legal"]')
    if len(value) > 200 or any(not 0 < len(item.strip()) <= 100 for item in value):
        raise ValidationError("At most 200 topics, each 1 to 100 characters")


DEFAULT_FLAGGED_INPUT_REPLY = (
    "I'm sorry, I can't help with that here. I've asked a member of our team to look at "
    "this conversation; they will reply here."
)
DEFAULT_SELF_HARM_REPLY = (
    "I'm really sorry you're feeling this way. You don't have to go through it alone. "
    "If you are in danger right now, please call your local emergency number. You can "
    "reach a crisis line at any hour: in the US call or text 988, in the UK and Ireland "
    "call Samaritans on 116 123, or find a helpline in your country at "
    "https://findahelpline.com. I've also asked a person from our team to join this "
    "conversation."
)
DEFAULT_SECRETS_REPLY = (
    "For your security, please don't share card numbers, passwords or other secrets in "
    "chat. A person from our team will follow up here."
)
DEFAULT_HANDOFF_NOTICE = (
    "I'm passing this conversation to a person from our team. They will reply here as "
    "soon as they can; you can keep this window open or come back later."
)
DEFAULT_UNCHECKED_NOTICE = (
    "I can't send an answer right now. A person from our team will follow up here."
)


def validate_origins(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("Allowed origins must be a list of strings like https://example.com")
    for origin in value:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValidationError(f"{origin!r} is not an origin (scheme://host[:port])")


class Site(models.Model):
    """A website that embeds the widget; its key is public, its prompt is not."""

    name = models.CharField(max_length=200)
    public_key = models.CharField(max_length=64, unique=True, default=new_site_key)
    allowed_origins = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_origins],
        help_text='Origins allowed to embed the widget, e.g. ["https://shop.example.com"].',
    )
    system_prompt = models.TextField(
        default="You are a helpful, concise customer-support assistant.",
    )
    model = models.CharField(
        max_length=200, blank=True, help_text="Model name; empty uses the LLM_MODEL setting."
    )
    temperature = models.FloatField(
        default=0.3, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    max_tokens = models.PositiveIntegerField(
        default=512, validators=[MinValueValidator(1), MaxValueValidator(32_000)]
    )

    class ModerationMode(models.TextChoices):
        GATE = "gate", "Gate: release each sentence only after it passes"
        AFTER = "after", "After: stream freely, withdraw a flagged answer at the end"

    class ModerationProvider(models.TextChoices):
        AUTO = "auto", "The moderation API when configured, otherwise offline"
        OFFLINE = "offline", "Offline (in the worker, no network)"
        API = "api", "The moderation API (MODERATION_BASE_URL)"

    moderation_mode = models.CharField(
        max_length=10, choices=ModerationMode.choices, default=ModerationMode.GATE
    )
    moderation_provider = models.CharField(
        max_length=10, choices=ModerationProvider.choices, default=ModerationProvider.AUTO
    )
    moderation_fail_open = models.BooleanField(
        default=False,
        help_text="When moderation itself fails, show answers unchecked instead of holding "
        "them and handing off.",
    )
    flagged_input_reply = models.TextField(
        default=DEFAULT_FLAGGED_INPUT_REPLY,
        help_text="Sent instead of an answer when a visitor's message is flagged.",
    )
    self_harm_reply = models.TextField(
        default=DEFAULT_SELF_HARM_REPLY,
        help_text="Sent when a visitor's message suggests self-harm; include help resources.",
    )
    secrets_reply = models.TextField(
        default=DEFAULT_SECRETS_REPLY,
        help_text="Sent when a visitor's message contains a card number or another secret.",
    )
    handoff_notice = models.TextField(
        default=DEFAULT_HANDOFF_NOTICE, help_text="Tells the visitor a person will take over."
    )
    handoff_topics = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_topics],
        help_text='Words or phrases that always go to a person, e.g. ["refund", "lawyer"].',
    )
    bot_answers_while_waiting = models.BooleanField(
        default=False, help_text="Keep answering while the conversation waits for a person."
    )
    # A secret in the system prompt: an answer that contains it leaked the prompt.
    prompt_canary = models.CharField(max_length=40, default=new_canary, editable=False)
    widget_title = models.CharField(max_length=60, default="Support")
    widget_colour = models.CharField(max_length=7, default="#1f4e79", validators=[validate_colour])
    widget_greeting = models.CharField(
        max_length=300, default="Hi! Ask us anything. A person can take over at any time."
    )
    # Limits for the whole site (conversations/ratelimit.py): empty takes the
    # deployment's RATE_SITE_* default, 0 means no limit.
    rate_messages_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Visitor messages per minute, all visitors together. Empty: the default "
        "(RATE_SITE_MESSAGES_PER_MINUTE); 0: no limit.",
    )
    rate_conversations_per_hour = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="New conversations per hour. Empty: the default "
        "(RATE_SITE_CONVERSATIONS_PER_HOUR); 0: no limit.",
    )
    rate_concurrent_replies = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Assistant replies being written at once. Empty: the default "
        "(RATE_SITE_CONCURRENT_REPLIES); 0: no limit.",
    )
    rate_tokens_per_day = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Model tokens (prompt + completion) per UTC day, a cost cap. Empty: the "
        "default (RATE_SITE_TOKENS_PER_DAY); 0: no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # Stored without a trailing slash, so every lookup can match exactly.
        self.allowed_origins = [
            origin.strip().rstrip("/") for origin in self.allowed_origins if origin.strip()
        ]
        super().save(*args, **kwargs)

    def allows_origin(self, origin: str | None) -> bool:
        if origin is None:
            return True
        return "*" in self.allowed_origins or origin.rstrip("/") in {
            allowed.rstrip("/") for allowed in self.allowed_origins
        }


class Conversation(models.Model):
    class Status(models.TextChoices):
        BOT = "bot", "Bot answers"
        WAITING = "waiting", "Waiting for a person"
        AGENT = "agent", "A person answers"
        CLOSED = "closed", "Closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="conversations")
    # Only a hash: a database leak must not let anyone impersonate a visitor.
    visitor_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.BOT)
    handoff_requested = models.BooleanField(default=False)
    handoff_reason = models.CharField(max_length=200, blank=True)
    # Any message of this conversation was flagged by moderation.
    moderation_flagged = models.BooleanField(default=False)
    # The person answering (status `agent`); claimed with a conditional update.
    assigned_agent = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_conversations",
    )
    # The last seq handed out; incremented in the same transaction as each event.
    seq = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["site", "visitor_hash"], name="conv_site_visitor"),
            models.Index(fields=["status", "-updated_at"], name="conv_status_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.site} / {self.id}"


class Message(models.Model):
    class Role(models.TextChoices):
        VISITOR = "visitor"
        ASSISTANT = "assistant"
        AGENT = "agent"
        SYSTEM = "system"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        FAILED = "failed"
        WITHDRAWN = "withdrawn"

    class Moderation(models.TextChoices):
        PENDING = "pending"
        PASSED = "passed"
        FLAGGED = "flagged"
        UNCHECKED = "unchecked"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    seq = models.PositiveBigIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices)
    text = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.COMPLETE)
    # NULL, not "": only messages that carry a client_id are unique on it.
    client_id = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    # The visitor message an assistant reply answers: one reply per question, which
    # makes a redelivered Celery task harmless.
    reply_to = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="reply"
    )
    sources = models.JSONField(default=list, blank=True)
    # The person who wrote an agent message.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    error_code = models.CharField(max_length=40, blank=True)

    moderation = models.CharField(
        max_length=10, choices=Moderation.choices, default=Moderation.PENDING
    )
    moderation_categories = models.JSONField(default=list, blank=True)
    moderation_scores = models.JSONField(default=dict, blank=True)
    moderation_provider = models.CharField(max_length=50, blank=True)
    moderation_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # The handoff decision taken with this message: whether it asked for a person, why.
    handoff_requested = models.BooleanField(default=False)
    handoff_reason = models.CharField(max_length=200, blank=True)

    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    # True when the provider reported no usage and the counts are our own tokenizer's.
    usage_estimated = models.BooleanField(default=False)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_time_ms = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["conversation", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_seq_unique"),
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_client_id_unique",
            ),
        ]
        indexes = [
            models.Index(
                fields=["status"], condition=Q(status="streaming"), name="message_streaming"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.seq}"


class StatusChange(models.Model):
    """Who answers a conversation, from when, and why: one row per change."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="status_changes"
    )
    seq = models.PositiveBigIntegerField()
    status = models.CharField(max_length=10, choices=Conversation.Status.choices)
    reason = models.CharField(max_length=200, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="status_seq_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.status} #{self.seq}"


class Ticket(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        PENDING = "pending"
        RESOLVED = "resolved"

    class Priority(models.IntegerChoices):
        LOW = 1
        NORMAL = 2
        HIGH = 3
        URGENT = 4

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="tickets")
    subject = models.CharField(max_length=200)
    # Why the conversation went to a person (the latest handoff's reason).
    reason = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tickets",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "-priority", "created_at"], name="ticket_queue"),
        ]

    def __str__(self) -> str:
        return self.subject


class InternalNote(models.Model):
    """Staff-only text about a conversation; never sent to a visitor or a model."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="notes")
    ticket = models.ForeignKey(
        Ticket, null=True, blank=True, on_delete=models.SET_NULL, related_name="notes"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"note by {self.author} at {self.created_at:%Y-%m-%d %H:%M}"


class Article(models.Model):
    """A help-centre article of one site: what the bot answers from."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="articles")
    title = models.CharField(max_length=300)
    body = models.TextField(help_text="Markdown.")
    url = models.URLField(max_length=500, blank=True)
    tags = models.JSONField(default=list, blank=True)
    published = models.BooleanField(default=True)
    # Where an import took it from (a URL or a file name): imports update by it.
    source = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title"]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "source"],
                condition=~Q(source=""),
                name="article_source_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    """A bounded piece of an article, indexed for full-text search.

    `site` repeats the article's site so that retrieval filters and ranks in one
    index-backed scan, without a join to restrict by site.
    """

    article = models.ForeignKey(Article, on_delete=models.CASCADE, related_name="chunks")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="+")
    ordinal = models.PositiveIntegerField()
    heading = models.CharField(max_length=300, blank=True)
    text = models.TextField()
    # Filled by the database (knowledge/store.py): title weight A, heading B, text C.
    search_vector = SearchVectorField(null=True)

    class Meta:
        ordering = ["article", "ordinal"]
        indexes = [
            GinIndex(fields=["search_vector"], name="chunk_search"),
            models.Index(fields=["site"], name="chunk_site"),
        ]

    def __str__(self) -> str:
        return f"{self.article} #{self.ordinal}"


class KnowledgeTerm(models.Model):
    """A word that occurs in a site's articles; visitors' misspellings are corrected
    to the nearest one (trigram similarity) before searching."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="+")
    term = models.CharField(max_length=60)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["site", "term"], name="knowledge_term_unique"),
        ]
        indexes = [
            GinIndex(fields=["term"], name="knowledge_term_trgm", opclasses=["gin_trgm_ops"]),
        ]

    def __str__(self) -> str:
        return self.term


class KnowledgeLexeme(models.Model):
    """In how many of a site's chunks a search lexeme occurs (its document frequency),
    kept up to date as articles change; retrieval weighs rare words above common
    ones with it. The row with lexeme "" holds the site's number of chunks."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="+")
    lexeme = models.CharField(max_length=100, blank=True)
    chunks = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["site", "lexeme"], name="knowledge_lexeme_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.lexeme or '(chunks)'}: {self.chunks}"
