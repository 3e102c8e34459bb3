"""What agents do to a conversation: take it over, reply, note, hand back, close.

Writes only (like services.py), each in one transaction, with events sent after
commit. Who answers a conversation is decided here, by conditional updates on its
row, never by what a console shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from conversations import events, stream_state
from conversations.models import Conversation, InternalNote, Message, StatusChange, Ticket
from conversations.serializers import agent_name
from conversations.services import ConversationClosed, _next_seq, _status_change

Status = Conversation.Status


class NotYours(Exception):
    """The conversation is not (or no longer) this agent's to answer."""

    def __init__(self, holder: str | None, status: str) -> None:
        super().__init__(holder or status)
        self.holder = holder
        self.status = status


@dataclass(frozen=True)
class TakeOver:
    won: bool
    holder: str | None  # who has the conversation now


def conversation_take_over(*, conversation_id: object, agent) -> TakeOver:
    """Claim a conversation for one agent. Two agents at once: exactly one wins.

    The claim is a conditional update on the row (status bot or waiting), so the
    loser's update changes nothing; from the commit on, the worker's reply_start
    sees `agent` and the bot answers no more, even for messages already queued.
    """
    with transaction.atomic():
        claimed = Conversation.objects.filter(
            pk=conversation_id, status__in=[Status.BOT, Status.WAITING]
        ).update(status=Status.AGENT, assigned_agent=agent, updated_at=timezone.now())
        conversation = (
            Conversation.objects.select_for_update(of=("self",))
            .select_related("site", "assigned_agent")
            .get(pk=conversation_id)
        )
        if not claimed:
            if conversation.status == Status.CLOSED:
                raise ConversationClosed
            return TakeOver(False, agent_name(conversation.assigned_agent))
        name = agent_name(agent)
        # The status column is already `agent`; record the change and its seq.
        _status_change(conversation, Status.AGENT, reason=f"taken over by {name}", actor=agent)
        _system_message(conversation, f"{name} from our team joined the conversation.")
        ticket = _current_ticket(conversation)
        if ticket is not None:
            ticket.assignee = agent
            ticket.status = Ticket.Status.OPEN
            ticket.save(update_fields=["assignee", "status", "updated_at"])
        events.queue_on_commit(conversation, ticket, action="taken")
        _stop_bot_replies(conversation_id)
    return TakeOver(True, name)


def _stop_bot_replies(conversation_id: object) -> None:
    """Stop replies still streaming in this conversation at their next delta.

    Set before the commit that announces the new owner, so no delta recorded after
    the flag can follow the visitor's `status` event. (If the commit then failed,
    the cost is one cut-short reply, never a reply after a takeover.)
    """
    ids = list(
        Message.objects.filter(
            conversation_id=conversation_id, status=Message.Status.STREAMING
        ).values_list("pk", flat=True)
    )
    if ids:
        stream_state.cancel_sync(ids)


def agent_message_create(
    *, conversation_id: object, agent, text: str, client_id: str
) -> tuple[Message, bool]:
    """Store an agent's reply (once per client_id); only the assigned agent may."""
    existing = Message.objects.filter(conversation_id=conversation_id, client_id=client_id).first()
    if existing is not None:
        return existing, False
    with transaction.atomic():
        conversation = _held_by(conversation_id, agent)
        seq, _ = _next_seq(conversation.pk)
        message = Message.objects.create(
            conversation=conversation,
            seq=seq,
            role=Message.Role.AGENT,
            text=text,
            client_id=client_id,
            author=agent,
            # A person's words are not moderated; staff are accountable for them.
            moderation=Message.Moderation.UNCHECKED,
            moderation_provider="agent",
        )
        events.message_on_commit(message)
    return message, True


def conversation_hand_back(*, conversation_id: object, agent, reason: str = "") -> StatusChange:
    """The bot answers again; the ticket is resolved."""
    with transaction.atomic():
        conversation = _held_by(conversation_id, agent, allow_waiting=True)
        why = reason or f"handed back to the assistant by {agent_name(agent)}"
        change = _status_change(conversation, Status.BOT, reason=why, actor=agent)
        conversation.assigned_agent = None
        conversation.handoff_requested = False
        conversation.save(update_fields=["assigned_agent", "handoff_requested", "updated_at"])
        _system_message(conversation, "You're chatting with our assistant again.")
        ticket = _resolve_ticket(conversation)
        events.queue_on_commit(conversation, ticket, action="handed_back")
    return change


def conversation_close(*, conversation_id: object, agent, reason: str = "") -> StatusChange:
    """No more messages; the visitor starts a new conversation to write again."""
    with transaction.atomic():
        conversation = _held_by(conversation_id, agent, allow_waiting=True, allow_bot=True)
        _system_message(conversation, "This conversation was closed. Start a new one any time.")
        why = reason or f"closed by {agent_name(agent)}"
        change = _status_change(conversation, Status.CLOSED, reason=why, actor=agent)
        ticket = _resolve_ticket(conversation)
        events.queue_on_commit(conversation, ticket, action="closed")
        _stop_bot_replies(conversation_id)
    return change


def note_create(*, conversation_id: object, agent, text: str) -> InternalNote:
    with transaction.atomic():
        conversation = Conversation.objects.get(pk=conversation_id)
        note = InternalNote.objects.create(
            conversation=conversation,
            ticket=_current_ticket(conversation),
            author=agent,
            text=text,
        )
        events.note_on_commit(note)
    return note


def _held_by(
    conversation_id: object, agent, *, allow_waiting: bool = False, allow_bot: bool = False
) -> Conversation:
    """The conversation, locked, if this agent may act on it now."""
    conversation = (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("site", "assigned_agent")
        .get(pk=conversation_id)
    )
    if conversation.status == Status.CLOSED:
        raise ConversationClosed
    if conversation.status == Status.AGENT and conversation.assigned_agent_id == agent.pk:
        return conversation
    if conversation.status == Status.WAITING and allow_waiting:
        return conversation
    if conversation.status == Status.BOT and allow_bot:
        return conversation
    raise NotYours(agent_name(conversation.assigned_agent), conversation.status)


def _system_message(conversation: Conversation, text: str) -> Message:
    seq, _ = _next_seq(conversation.pk)
    message = Message.objects.create(
        conversation=conversation,
        seq=seq,
        role=Message.Role.SYSTEM,
        text=text,
        moderation=Message.Moderation.PASSED,
        moderation_provider="site",
    )
    events.message_on_commit(message)
    return message


def _current_ticket(conversation: Conversation) -> Ticket | None:
    return conversation.tickets.order_by("-created_at").first()


def _resolve_ticket(conversation: Conversation) -> Ticket | None:
    ticket = _current_ticket(conversation)
    if ticket is not None and ticket.status != Ticket.Status.RESOLVED:
        ticket.status = Ticket.Status.RESOLVED
        ticket.resolved_at = timezone.now()
        ticket.save(update_fields=["status", "resolved_at", "updated_at"])
    return ticket
