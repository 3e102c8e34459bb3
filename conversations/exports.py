"""Transcript exports for staff (admin actions): JSON and CSV, with staff-only fields.

Exports carry what staff see and visitors do not: withdrawn answers' text, moderation
verdicts, handoff reasons, token usage. They never carry a site's prompt or canary,
nor the visitor's hash; internal notes stay in the admin (a transcript is what was
said in the conversation).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from conversations.models import Conversation, Message, StatusChange
from conversations.serializers import agent_name

CSV_COLUMNS = [
    "conversation_id",
    "seq",
    "role",
    "status",
    "created_at",
    "text",
    "moderation",
    "moderation_categories",
    "handoff_reason",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "author",
    "error_code",
]

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV
# injection"); Excel also reads the full-width forms of = + - @ as formulas.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def neutralise_cell(value: str) -> str:
    """The cell's text, made inert for spreadsheets by a leading single quote."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def category_list(value: object) -> list[str]:
    # The column is free JSON: tolerate anything a provider stored, show strings.
    if isinstance(value, list):
        return [str(item) for item in value]
    return [] if value in (None, "", {}) else [str(value)]


def _rows(
    conversations: Iterable[Conversation],
) -> tuple[list[Conversation], dict[Any, list[Message]], dict[Any, list[StatusChange]]]:
    """The conversations with their messages and status changes: three queries in all,
    however many conversations are exported."""
    conversations = list(conversations)
    ids = [conversation.pk for conversation in conversations]
    messages: dict[Any, list[Message]] = defaultdict(list)
    for message in (
        Message.objects.filter(conversation_id__in=ids)
        .select_related("author")
        .order_by("conversation_id", "seq")
    ):
        messages[message.conversation_id].append(message)
    changes: dict[Any, list[StatusChange]] = defaultdict(list)
    for change in (
        StatusChange.objects.filter(conversation_id__in=ids)
        .select_related("actor")
        .order_by("conversation_id", "seq")
    ):
        changes[change.conversation_id].append(change)
    return conversations, messages, changes


def _message_data(message: Message) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "role": message.role,
        "status": message.status,
        "created_at": _iso(message.created_at),
        "completed_at": _iso(message.completed_at),
        # Withdrawn answers keep their text: staff see what was withheld.
        "text": message.text,
        "author": agent_name(message.author) if message.author_id else None,
        "error_code": message.error_code,
        "moderation": message.moderation,
        "moderation_categories": category_list(message.moderation_categories),
        "moderation_scores": message.moderation_scores,
        "moderation_provider": message.moderation_provider,
        "handoff_requested": message.handoff_requested,
        "handoff_reason": message.handoff_reason,
        "model": message.model,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "usage_estimated": message.usage_estimated,
    }


def _change_data(change: StatusChange) -> dict[str, Any]:
    return {
        "seq": change.seq,
        "status": change.status,
        "reason": change.reason,
        "actor": agent_name(change.actor) if change.actor_id else None,
        "created_at": _iso(change.created_at),
    }


def transcripts(conversations: Iterable[Conversation]) -> list[dict[str, Any]]:
    """Each conversation with its messages and status changes, in seq order.

    Pass conversations with `site` and `assigned_agent` selected to keep the
    query count constant.
    """
    conversations, messages, changes = _rows(conversations)
    return [
        {
            "id": str(conversation.pk),
            "site": {"id": conversation.site_id, "name": conversation.site.name},
            "status": conversation.status,
            "handoff_requested": conversation.handoff_requested,
            "handoff_reason": conversation.handoff_reason,
            "moderation_flagged": conversation.moderation_flagged,
            "assigned_agent": agent_name(conversation.assigned_agent)
            if conversation.assigned_agent_id
            else None,
            "created_at": _iso(conversation.created_at),
            "updated_at": _iso(conversation.updated_at),
            "messages": [_message_data(m) for m in messages[conversation.pk]],
            "status_changes": [_change_data(c) for c in changes[conversation.pk]],
        }
        for conversation in conversations
    ]


def export_json(conversations: Iterable[Conversation]) -> bytes:
    """One JSON document: {"conversations": [...]}, UTF-8."""
    document = {"conversations": transcripts(conversations)}
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def export_csv(conversations: Iterable[Conversation]) -> str:
    """One row per message, every text cell neutralised against formula injection."""
    conversations, messages, _ = _rows(conversations)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for conversation in conversations:
        for message in messages[conversation.pk]:
            row: list[object] = [
                str(conversation.pk),
                message.seq,
                message.role,
                message.status,
                _iso(message.created_at),
                message.text,
                message.moderation,
                "; ".join(category_list(message.moderation_categories)),
                message.handoff_reason,
                message.prompt_tokens,
                message.completion_tokens,
                message.usage_estimated,
                agent_name(message.author) if message.author_id else "",
                message.error_code,
            ]
            writer.writerow(
                [neutralise_cell(cell) if isinstance(cell, str) else cell for cell in row]
            )
    return buffer.getvalue()
