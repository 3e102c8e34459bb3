"""The protocol's JSON shapes (docs/protocol.md), built from rows."""

from __future__ import annotations

from typing import Any

from conversations.models import Conversation, InternalNote, Message, StatusChange, Ticket


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


def agent_name(user) -> str | None:
    if user is None:
        return None
    return user.get_full_name() or user.get_username()


def ticket_dict(ticket: Ticket | None) -> dict[str, Any] | None:
    if ticket is None:
        return None
    return {
        "id": ticket.pk,
        "status": ticket.status,
        "priority": ticket.priority,
        "priority_label": ticket.get_priority_display(),
        "reason": ticket.reason,
        "subject": ticket.subject,
    }


def queue_event(conversation: Conversation, ticket: Ticket | None, *, action: str) -> dict:
    """A conversation as an agent's queue shows it (only ever sent to staff)."""
    return {
        "type": "queue",
        "action": action,
        "conversation": {
            "id": str(conversation.pk),
            "site": conversation.site_id,
            "site_name": conversation.site.name,
            "status": conversation.status,
            "handoff_reason": conversation.handoff_reason,
            "moderation_flagged": conversation.moderation_flagged,
            "assigned_agent": agent_name(conversation.assigned_agent),
            "assigned_agent_id": conversation.assigned_agent_id,
            "updated_at": conversation.updated_at.isoformat(),
            "created_at": conversation.created_at.isoformat(),
        },
        "ticket": ticket_dict(ticket),
    }


def staff_message_dict(message: Message) -> dict[str, Any]:
    """A message as staff see it: withdrawn text included, with its verdict."""
    data = message_dict(message)
    data.update(
        {
            "text": message.text,
            "moderation": message.moderation,
            "moderation_categories": message.moderation_categories,
            "handoff_reason": message.handoff_reason,
            "error_code": message.error_code,
            "author": agent_name(message.author) if message.author_id else None,
        }
    )
    return data


def note_dict(note: InternalNote) -> dict[str, Any]:
    return {
        "id": note.pk,
        "conversation_id": str(note.conversation_id),
        "text": note.text,
        "author": agent_name(note.author),
        "created_at": note.created_at.isoformat(),
    }
