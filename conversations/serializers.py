"""The protocol's JSON shapes (docs/protocol.md), built from rows."""

from __future__ import annotations

from typing import Any

from conversations.models import Conversation, Message, StatusChange


def message_dict(message: Message, *, text_so_far: str | None = None) -> dict[str, Any]:
    withdrawn = message.status == Message.Status.WITHDRAWN
    data: dict[str, Any] = {
        "id": str(message.pk),
        "seq": message.seq,
        "role": message.role,
        # A withdrawn answer's text stays on the server for staff only.
        "text": "" if withdrawn else (text_so_far if text_so_far is not None else message.text),
        "status": message.status,
        "created_at": message.created_at.isoformat(),
        "sources": message.sources or [],
    }
    if message.role == Message.Role.VISITOR:
        data["client_id"] = message.client_id
    return data


def status_event(change: StatusChange) -> dict[str, Any]:
    return {"type": "status", "status": change.status, "seq": change.seq}


def conversation_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.pk),
        "status": conversation.status,
        "created_at": conversation.created_at.isoformat(),
    }
