"""Reads. Views, consumers and tasks fetch through these and hold no query logic."""

from __future__ import annotations

from django.db.models import Case, Value, When

from conversations import visitors
from conversations.models import Conversation, InternalNote, Message, Site, StatusChange, Ticket
from conversations.text import storable


def site_by_key(site_key: object) -> Site | None:
    if not isinstance(site_key, str) or not 0 < len(site_key) <= 64:
        return None
    if not storable(site_key):
        # No stored key holds these, and PostgreSQL refuses them even in a query.
        return None
    return Site.objects.filter(public_key=site_key).first()


def conversation_by_id(conversation_id: object) -> Conversation | None:
    try:
        return Conversation.objects.select_related("site").filter(pk=conversation_id).first()
    except (ValueError, TypeError):
        return None


def conversation_for_visitor(conversation_id: object, token: str) -> Conversation | None:
    """The conversation if this token owns it; None hides whether it exists."""
    conversation = conversation_by_id(conversation_id)
    if conversation is None or not visitors.owns(token, conversation.visitor_hash):
        return None
    return conversation


def messages_after(conversation_id: object, after_seq: int) -> list[Message]:
    return list(
        Message.objects.filter(conversation_id=conversation_id, seq__gt=after_seq).order_by("seq")
    )


def events_after(conversation_id: object, after_seq: int) -> list[Message | StatusChange]:
    """Messages and status changes with seq > after_seq, in seq order."""
    # Every one, as the protocol promises; a conversation's length is bounded by
    # the visitors' rate limits.
    messages = messages_after(conversation_id, after_seq)
    changes = list(
        StatusChange.objects.filter(conversation_id=conversation_id, seq__gt=after_seq).order_by(
            "seq"
        )
    )
    return sorted([*messages, *changes], key=lambda row: row.seq)


def last_seq(conversation_id: object) -> int:
    return Conversation.objects.values_list("seq", flat=True).get(pk=conversation_id)


def prompt_history(conversation_id: object, up_to_seq: int, limit: int = 200) -> list[Message]:
    """The latest turns up to a seq that a prompt may include, oldest first.

    Failed and withdrawn answers are left out: the model should not build on text
    that the visitor was told failed or that moderation removed.
    """
    rows = (
        Message.objects.filter(
            conversation_id=conversation_id,
            seq__lte=up_to_seq,
            role__in=[Message.Role.VISITOR, Message.Role.ASSISTANT, Message.Role.AGENT],
            status=Message.Status.COMPLETE,
        )
        .order_by("-seq")
        .only("role", "text", "seq")[:limit]
    )
    return list(reversed(rows))


def message_by_client_id(conversation_id: object, client_id: str) -> Message | None:
    return Message.objects.filter(conversation_id=conversation_id, client_id=client_id).first()


def streaming_messages(conversation_id: object) -> list[Message]:
    return list(
        Message.objects.filter(
            conversation_id=conversation_id, status=Message.Status.STREAMING
        ).order_by("seq")
    )


def site_allowing_origin(origin: str) -> Site | None:
    """Some site that lists this origin (for CORS preflights, which carry no site key)."""
    if not origin or len(origin) > 300:
        return None
    origin = origin.rstrip("/")
    return (
        Site.objects.filter(allowed_origins__contains=[origin]).first()
        or Site.objects.filter(allowed_origins__contains=["*"]).first()
    )


def visitor_texts_before(conversation_id: object, seq: int, limit: int = 20) -> list[str]:
    """The visitor's latest messages before a seq, newest first."""
    return list(
        Message.objects.filter(
            conversation_id=conversation_id, role=Message.Role.VISITOR, seq__lt=seq
        )
        .order_by("-seq")
        .values_list("text", flat=True)[:limit]
    )


def previous_reply_failed(conversation_id: object, seq: int) -> bool:
    """Whether the bot's last answer before this seq failed."""
    status = (
        Message.objects.filter(
            conversation_id=conversation_id, role=Message.Role.ASSISTANT, seq__lt=seq
        )
        .order_by("-seq")
        .values_list("status", flat=True)
        .first()
    )
    return status == Message.Status.FAILED


# --- Staff reads (the agent console) --------------------------------------------------

QUEUE_LIMIT = 200


def agent_queue(limit: int = QUEUE_LIMIT) -> list[dict]:
    """Conversations a person should see: waiting ones and those agents hold.

    Waiting first, most urgent ticket first, then newest; each as a queue item.
    """
    from conversations.serializers import queue_event

    waiting_first = Case(When(status=Conversation.Status.WAITING, then=Value(0)), default=Value(1))
    conversations = list(
        Conversation.objects.filter(
            status__in=[Conversation.Status.WAITING, Conversation.Status.AGENT]
        )
        .select_related("site", "assigned_agent")
        .order_by(waiting_first, "-updated_at")[:limit]
    )
    tickets = _latest_tickets([c.pk for c in conversations])
    items = []
    for conversation in conversations:
        event = queue_event(conversation, tickets.get(conversation.pk), action="listed")
        items.append({**event["conversation"], "ticket": event["ticket"]})
    return sorted(items, key=queue_order)


def queue_order(item: dict) -> tuple:
    """Waiting before held; urgent before normal; newest first."""
    ticket = item.get("ticket") or {}
    return (
        item["status"] != Conversation.Status.WAITING,
        -(ticket.get("priority") or 0),
        -_timestamp(item["updated_at"]),
    )


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _latest_tickets(conversation_ids: list) -> dict:
    latest: dict = {}
    for ticket in Ticket.objects.filter(conversation_id__in=conversation_ids).order_by(
        "created_at"
    ):
        latest[ticket.conversation_id] = ticket
    return latest


def agent_thread(conversation_id: object) -> dict | None:
    """Everything the console shows about one conversation, for staff only."""
    from conversations.serializers import note_dict, queue_event, staff_message_dict

    conversation = (
        Conversation.objects.select_related("site", "assigned_agent")
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None:
        return None
    ticket = conversation.tickets.order_by("-created_at").first()
    summary = queue_event(conversation, ticket, action="opened")
    messages = Message.objects.filter(conversation=conversation).select_related("author")
    changes = StatusChange.objects.filter(conversation=conversation).select_related("actor")
    return {
        "conversation": summary["conversation"],
        "ticket": summary["ticket"],
        "last_seq": conversation.seq,
        "messages": [staff_message_dict(m) for m in messages.order_by("seq")],
        "status_changes": [
            {
                "seq": c.seq,
                "status": c.status,
                "reason": c.reason,
                "actor": (c.actor.get_full_name() or c.actor.get_username()) if c.actor else None,
                "created_at": c.created_at.isoformat(),
            }
            for c in changes.order_by("seq")
        ],
        "notes": [
            note_dict(n)
            for n in InternalNote.objects.filter(conversation=conversation).select_related("author")
        ],
    }


def held_by(conversation_id: object, user_id: int) -> bool:
    return Conversation.objects.filter(
        pk=conversation_id, status=Conversation.Status.AGENT, assigned_agent_id=user_id
    ).exists()
