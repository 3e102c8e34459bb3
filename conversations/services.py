"""Writes. Each takes keyword-only arguments, runs in one transaction, and leaves
broadcasting to events.py after the commit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from conversations import events, ratelimit, stream_state, visitors
from conversations.handoff import Decision
from conversations.models import Conversation, Message, Site, StatusChange, Ticket
from conversations.moderation.verdict import FLAGGED, Verdict

logger = logging.getLogger(__name__)


class ConversationClosed(Exception):
    """The conversation takes no more messages."""


@dataclass(frozen=True)
class StoredMessage:
    message: Message
    created: bool  # False when the client_id had been stored before
    # False when the bot should answer but the reply could not be queued (broker
    # down); the client resends the same client_id to try again.
    reply_queued: bool = True


def conversation_create(*, site: Site, visitor_token: str | None) -> tuple[Conversation, str]:
    """Start a conversation; a token already valid for this site is kept."""
    if visitor_token is None or visitors.site_key_of(visitor_token) != site.public_key:
        visitor_token = visitors.issue_token(site.public_key)
    conversation = Conversation.objects.create(
        site=site, visitor_hash=visitors.hash_token(visitor_token)
    )
    return conversation, visitor_token


def _next_seq(conversation_id: object) -> tuple[int, str]:
    """Take the conversation's next seq; the row lock serialises concurrent writers."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Conversation._meta.db_table} SET seq = seq + 1, updated_at = %s "  # noqa: S608
            "WHERE id = %s RETURNING seq, status",
            [timezone.now(), conversation_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Conversation.DoesNotExist(conversation_id)
    return row[0], row[1]


def message_create_from_visitor(
    *, conversation_id: object, text: str, client_id: str
) -> StoredMessage:
    """Store a visitor's message once per client_id and, if the bot answers, queue a reply.

    Runs its own transaction and queues the reply after it commits, so it must not
    be called inside another transaction.
    """
    if connection.in_atomic_block:
        raise RuntimeError("message_create_from_visitor needs to commit before queueing")
    existing = Message.objects.filter(conversation_id=conversation_id, client_id=client_id).first()
    if existing is not None:
        return message_resend(message=existing)
    try:
        with transaction.atomic():
            seq, status = _next_seq(conversation_id)
            if status == Conversation.Status.CLOSED:
                raise ConversationClosed
            message = Message.objects.create(
                conversation_id=conversation_id,
                seq=seq,
                role=Message.Role.VISITOR,
                text=text,
                client_id=client_id,
            )
            events.message_on_commit(message)
    except IntegrityError:
        # The same client_id raced in from another socket; the first one won.
        existing = Message.objects.filter(
            conversation_id=conversation_id, client_id=client_id
        ).first()
        if existing is None:
            raise
        return StoredMessage(existing, created=False)
    # Every visitor message goes to the worker: it is moderated even when a person,
    # not the bot, answers the conversation.
    queued = _queue_reply(message.pk)
    return StoredMessage(message, created=True, reply_queued=queued)


def bot_answers(conversation: Conversation) -> bool:
    """Whether the bot replies to the conversation's new messages."""
    if conversation.status == Conversation.Status.BOT:
        return True
    return (
        conversation.status == Conversation.Status.WAITING
        and conversation.site.bot_answers_while_waiting
    )


def bot_answers_question(question: Message, conversation: Conversation) -> bool:
    """Whether the bot answers this visitor message: it answers the conversation now,
    and did when the message was sent (a message written to a person is not
    answered by the bot because the person handed back before the worker ran)."""
    if not bot_answers(conversation):
        return False
    then = (
        StatusChange.objects.filter(conversation_id=conversation.pk, seq__lt=question.seq)
        .order_by("-seq")
        .values_list("status", flat=True)
        .first()
    )
    if then is None or then == Conversation.Status.BOT:
        return True
    return then == Conversation.Status.WAITING and conversation.site.bot_answers_while_waiting


def message_resend(*, message: Message) -> StoredMessage:
    """A client_id sent again: the stored message, and a second chance for its
    processing if queueing it failed the first time (the task is idempotent)."""
    conversation = Conversation.objects.select_related("site").get(pk=message.conversation_id)
    due = message.moderation == Message.Moderation.PENDING or (
        not Message.objects.filter(reply_to=message).exists()
        and bot_answers_question(message, conversation)
    )
    queued = _queue_reply(message.pk) if due else True
    return StoredMessage(message, created=False, reply_queued=queued)


def message_moderated(*, message_id: int, verdict: Verdict, decision: Decision) -> None:
    """Store a visitor message's moderation verdict and the handoff decision it led to."""
    with transaction.atomic():
        Message.objects.filter(pk=message_id).update(
            moderation=verdict.status,
            moderation_categories=list(verdict.categories),
            moderation_scores=verdict.scores,
            moderation_provider=verdict.provider[:50],
            moderation_latency_ms=verdict.latency_ms,
            handoff_requested=decision.requested,
            handoff_reason=decision.reason[:200],
        )
        if verdict.status == FLAGGED:
            Conversation.objects.filter(messages__pk=message_id, moderation_flagged=False).update(
                moderation_flagged=True
            )


def _queue_reply(visitor_message_id: int) -> bool:
    from conversations.tasks import generate_reply

    try:
        generate_reply.apply_async(
            (visitor_message_id,),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        logger.exception("could not queue the reply to message %s", visitor_message_id)
        return False
    return True


def conversation_request_handoff(*, conversation_id: object, reason: str) -> StatusChange | None:
    """The visitor asked for a person (the protocol's `handoff` frame)."""
    return conversation_handoff(
        conversation_id=conversation_id, decision=Decision(reason), raise_if_closed=True
    )


def conversation_handoff(
    *,
    conversation_id: object,
    decision: Decision,
    notice: bool = True,
    raise_if_closed: bool = False,
) -> StatusChange | None:
    """Hand the conversation to a person: status `waiting`, its ticket opened (or
    reopened) with the reason and priority, agents told, and (with `notice`) the
    visitor told in plain words by a system message.

    Returns None when no change was due: a person already has it, or it is waiting
    already (then its open ticket's priority is raised if this reason is more
    urgent), or it is closed.
    """
    with transaction.atomic():
        conversation = (
            Conversation.objects.select_for_update(of=("self",))
            .select_related("site")
            .get(pk=conversation_id)
        )
        if conversation.status == Conversation.Status.CLOSED:
            if raise_if_closed:
                raise ConversationClosed
            return None
        if conversation.status != Conversation.Status.BOT:
            _ticket_escalate(conversation, decision)
            return None
        change = _status_change(conversation, Conversation.Status.WAITING, reason=decision.reason)
        conversation.handoff_requested = True
        conversation.handoff_reason = decision.reason[:200]
        conversation.save(update_fields=["handoff_requested", "handoff_reason", "updated_at"])
        ticket = _ticket_open(conversation, decision)
        if notice:
            seq, _ = _next_seq(conversation.pk)
            message = Message.objects.create(
                conversation=conversation,
                seq=seq,
                role=Message.Role.SYSTEM,
                text=conversation.site.handoff_notice,
                moderation=Message.Moderation.PASSED,
                moderation_provider="site",
                handoff_requested=True,
                handoff_reason=decision.reason[:200],
            )
            events.message_on_commit(message)
        events.queue_on_commit(conversation, ticket, action="handoff")
    return change


def _ticket_open(conversation: Conversation, decision: Decision) -> Ticket:
    """The conversation's latest ticket, reopened; a new one if it has none."""
    ticket = conversation.tickets.order_by("-created_at").first()
    if ticket is None:
        return Ticket.objects.create(
            conversation=conversation,
            subject=_ticket_subject(conversation),
            reason=decision.reason[:200],
            priority=decision.priority,
        )
    ticket.status = Ticket.Status.OPEN
    ticket.reason = decision.reason[:200]
    ticket.priority = max(ticket.priority, decision.priority)
    ticket.resolved_at = None
    ticket.save(update_fields=["status", "reason", "priority", "resolved_at", "updated_at"])
    return ticket


def _ticket_escalate(conversation: Conversation, decision: Decision) -> None:
    """A more urgent reason while a person has (or is about to have) the conversation."""
    ticket = (
        conversation.tickets.exclude(status=Ticket.Status.RESOLVED).order_by("-created_at").first()
    )
    if ticket is not None and decision.priority > ticket.priority:
        ticket.priority = decision.priority
        ticket.reason = decision.reason[:200]
        ticket.save(update_fields=["priority", "reason", "updated_at"])
        events.queue_on_commit(conversation, ticket, action="escalated")


def _status_change(
    conversation: Conversation, status: str, *, reason: str, actor=None
) -> StatusChange:
    seq, _ = _next_seq(conversation.pk)
    conversation.status = status
    conversation.seq = seq
    Conversation.objects.filter(pk=conversation.pk).update(status=status)
    change = StatusChange.objects.create(
        conversation=conversation, seq=seq, status=status, reason=reason, actor=actor
    )
    events.status_on_commit(change)
    return change


def _ticket_subject(conversation: Conversation) -> str:
    first = conversation.messages.filter(role=Message.Role.VISITOR).order_by("seq").first()
    text = " ".join(first.text.split()) if first else "Visitor asked for a person"
    return text[:197] + "..." if len(text) > 200 else text


# --- Replies (called by the Celery task through conversations.replies) -----------


def reply_start(
    *, visitor_message_id: int, model: str, sources: list[dict] | None = None
) -> Message | None:
    """Create the streaming assistant message that answers a visitor message.

    Returns None when no reply is due: the bot no longer answers the conversation,
    or a reply already exists (a redelivered task). A reply left streaming by a
    worker that died is failed here, so the visitor gets one outcome, not two.
    """
    with transaction.atomic():
        question = (
            Message.objects.select_related("conversation__site")
            .select_for_update(of=("self",))
            .get(pk=visitor_message_id)
        )
        existing = Message.objects.filter(reply_to=question).first()
        if existing is not None:
            # A reply older than the hard time limit that is still streaming lost its
            # worker (a live one would have ended it); a younger one is in progress
            # in another task, which a duplicate of this task must leave alone.
            lost_before = timezone.now() - timedelta(seconds=settings.REPLY_TIME_LIMIT + 30)
            if existing.status == Message.Status.STREAMING and existing.created_at < lost_before:
                logger.warning("reply %s was left streaming by a lost worker", existing.pk)
                existing.text = stream_state.text_so_far(existing.pk)
                _reply_close(existing, status=Message.Status.FAILED, error_code="worker_lost")
            return None
        if not bot_answers_question(question, question.conversation):
            return None
        seq, status = _next_seq(question.conversation_id)
        question.conversation.status = status
        if not bot_answers(question.conversation):
            # Handed off since the check above: give the seq back, or it is a gap.
            transaction.set_rollback(True)
            return None
        reply = Message.objects.create(
            conversation_id=question.conversation_id,
            seq=seq,
            role=Message.Role.ASSISTANT,
            text="",
            status=Message.Status.STREAMING,
            reply_to=question,
            model=model,
            sources=sources or [],
        )
        events.reply_started_on_commit(reply)
    return reply


def reply_complete(
    *,
    reply_id: int,
    text: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    usage_estimated: bool,
    time_to_first_token_ms: int | None,
    total_time_ms: int,
    verdict: Verdict,
    decision: Decision,
    withdrawn_code: str = "",
) -> Message:
    """Store a reply's outcome: complete, or (with `withdrawn_code`) withdrawn, its
    text then kept for staff only."""
    with transaction.atomic():
        reply = Message.objects.select_for_update().get(pk=reply_id)
        reply.text = text
        reply.prompt_tokens = prompt_tokens
        reply.completion_tokens = completion_tokens
        reply.usage_estimated = usage_estimated
        reply.time_to_first_token_ms = time_to_first_token_ms
        reply.total_time_ms = total_time_ms
        _verdict_on(reply, verdict)
        reply.handoff_requested = decision.requested
        reply.handoff_reason = decision.reason[:200]
        if withdrawn_code:
            _reply_close(reply, status=Message.Status.WITHDRAWN, error_code=withdrawn_code)
        else:
            _reply_close(reply, status=Message.Status.COMPLETE)
        if verdict.status == FLAGGED:
            Conversation.objects.filter(pk=reply.conversation_id).update(moderation_flagged=True)
    return reply


def _verdict_on(message: Message, verdict: Verdict) -> None:
    message.moderation = verdict.status
    message.moderation_categories = list(verdict.categories)
    message.moderation_scores = verdict.scores
    message.moderation_provider = verdict.provider[:50]
    message.moderation_latency_ms = verdict.latency_ms


def reply_fail(
    *,
    reply_id: int,
    text_so_far: str,
    error_code: str,
    detail: str,
    time_to_first_token_ms: int | None,
    total_time_ms: int,
    verdict: Verdict | None = None,
    decision: Decision | None = None,
) -> Message:
    """Mark a reply failed, keeping whatever text had already streamed."""
    with transaction.atomic():
        reply = Message.objects.select_for_update().get(pk=reply_id)
        reply.text = text_so_far
        reply.time_to_first_token_ms = time_to_first_token_ms
        reply.total_time_ms = total_time_ms
        if verdict is not None:
            _verdict_on(reply, verdict)
        if decision is not None:
            reply.handoff_requested = decision.requested
            reply.handoff_reason = decision.reason[:200]
        _reply_close(reply, status=Message.Status.FAILED, error_code=error_code, detail=detail)
    return reply


def _reply_close(
    reply: Message, *, status: str, error_code: str = "", detail: str | None = None
) -> None:
    """End a streaming reply, once: a claim on status=streaming, so a late worker
    and a redelivered task cannot both announce an outcome."""
    reply.status = status
    reply.error_code = error_code
    reply.completed_at = timezone.now()
    fields = {
        "status": status,
        "error_code": error_code,
        "completed_at": reply.completed_at,
        "text": reply.text,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "usage_estimated": reply.usage_estimated,
        "time_to_first_token_ms": reply.time_to_first_token_ms,
        "total_time_ms": reply.total_time_ms,
        "moderation": reply.moderation,
        "moderation_categories": reply.moderation_categories,
        "moderation_scores": reply.moderation_scores,
        "moderation_provider": reply.moderation_provider,
        "moderation_latency_ms": reply.moderation_latency_ms,
        "handoff_requested": reply.handoff_requested,
        "handoff_reason": reply.handoff_reason,
    }
    claimed = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING).update(**fields)
    if claimed != 1:
        logger.warning("reply %s was already closed; keeping its first outcome", reply.pk)
        reply.refresh_from_db()
        return
    # Before the events: a visitor who sees `done` finds the slot free and the tokens counted.
    transaction.on_commit(lambda: ratelimit.reply_closed(reply), robust=True)
    if status == Message.Status.WITHDRAWN:
        events.reply_withdrawn_on_commit(reply)
    else:
        events.reply_finished_on_commit(reply, error_detail=detail)


def replies_fail_lost(*, suspects: set[int]) -> tuple[int, set[int]]:
    """Fail streaming replies whose worker is gone: their lease (leases.py) was
    missing on this sweep and on the one before (`suspects`), so a Redis restart,
    after which live workers renew within seconds, fails nothing.

    Returns how many were failed and the new suspects for the next sweep.
    """
    from conversations import leases

    settled_before = timezone.now() - timedelta(seconds=settings.REPLY_LEASE_SECONDS)
    streaming = list(
        Message.objects.filter(
            status=Message.Status.STREAMING, created_at__lt=settled_before
        ).values_list("pk", flat=True)[:1000]
    )
    lapsed = leases.lapsed(streaming)
    failed = 0
    for reply_id in sorted(lapsed & suspects):
        failed += _fail_lost_reply(reply_id)
    return failed, lapsed - suspects


def _fail_lost_reply(reply_id: int) -> int:
    # Should the worker still be alive after all (a frozen process), its next delta
    # is refused and its late outcome loses to this one.
    stream_state.cancel_sync([reply_id])
    with transaction.atomic():
        reply = Message.objects.select_for_update().filter(pk=reply_id).first()
        if reply is None or reply.status != Message.Status.STREAMING:
            return 0
        reply.text = stream_state.text_so_far(reply.pk)
        _reply_close(
            reply,
            status=Message.Status.FAILED,
            error_code="worker_lost",
            detail="The assistant stopped unexpectedly. Please send your message again.",
        )
    return 1


def messages_requeue_unprocessed() -> int:
    """Queue again the tasks of visitor messages no worker has processed (still
    unmoderated) after REQUEUE_UNANSWERED_SECONDS: their worker died holding them.
    The task is idempotent; a Redis flag keeps one message from being re-queued
    more often than that."""
    from conversations.redis_clients import sync_redis

    now = timezone.now()
    ids = list(
        Message.objects.filter(
            role=Message.Role.VISITOR,
            moderation=Message.Moderation.PENDING,
            created_at__lt=now - timedelta(seconds=settings.REQUEUE_UNANSWERED_SECONDS),
            created_at__gt=now - timedelta(hours=1),
        )
        .exclude(conversation__status=Conversation.Status.CLOSED)
        .values_list("pk", flat=True)[:500]
    )
    queued = 0
    redis = sync_redis()
    for message_id in ids:
        if redis.set(f"requeued:{message_id}", 1, nx=True, ex=settings.REQUEUE_UNANSWERED_SECONDS):
            queued += _queue_reply(message_id)
    return queued


def replies_fail_stale() -> int:
    """Fail replies still `streaming` long after any worker could be on them (their
    worker died and no redelivery came). Returns how many were failed."""
    lost_before = timezone.now() - timedelta(seconds=settings.REPLY_TIME_LIMIT + 30)
    failed = 0
    for reply_id in Message.objects.filter(
        status=Message.Status.STREAMING, created_at__lt=lost_before
    ).values_list("pk", flat=True):
        with transaction.atomic():
            reply = Message.objects.select_for_update().filter(pk=reply_id).first()
            if reply is None or reply.status != Message.Status.STREAMING:
                continue
            reply.text = stream_state.text_so_far(reply.pk)
            _reply_close(reply, status=Message.Status.FAILED, error_code="worker_lost")
            failed += 1
    return failed
