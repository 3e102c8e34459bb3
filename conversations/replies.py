"""One assistant reply, from the visitor's question to the stored answer.

Runs in a Celery task thread: database work happens here, synchronously, and the
stream itself runs on the process's shared event loop (background_loop), so a
worker process streams hundreds of replies at once while each task thread just
waits. The database connection is released while the model streams, so
concurrent replies do not hold one connection each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)

from conversations import (
    background_loop,
    events,
    handoff,
    leases,
    moderation,
    ratelimit,
    selectors,
    services,
    stream_state,
    tokens,
)
from conversations.knowledge import retrieval
from conversations.llm import ChatRequest, ChatResult, LLMClient, LLMError
from conversations.models import DEFAULT_UNCHECKED_NOTICE, Message, Ticket
from conversations.moderation import Verdict
from conversations.moderation.gate import (
    LEAK_CODE,
    UNCHECKED_CODE,
    AnswerChecker,
    FreeRelease,
    Gate,
    Stop,
    stop_for,
)
from conversations.moderation.leak import LeakDetector
from conversations.prompt import build_messages, system_prompt_for, with_knowledge

logger = logging.getLogger(__name__)

# Errors of a database that is away (down, restarting, failing over) rather than of
# the statement: worth retrying.
DB_AWAY = (OperationalError, InterfaceError)


class _StoreAbandoned(Exception):
    """A finished reply could not be stored within DB_RETRY_SECONDS."""


NO_KNOWLEDGE_REPLY = (
    "I'm sorry, I couldn't find the answer to that in our help centre, and I'd rather "
    "not guess. I've asked a person from our team to help; they will reply here."
)

_client: LLMClient | None = None


def llm_client() -> LLMClient:
    global _client
    if _client is None:
        _client = LLMClient.from_settings()
    return _client


@dataclass
class RelayOutcome:
    result: ChatResult | None
    error: LLMError | None
    text_so_far: str
    deltas: int
    elapsed: float
    # Seconds to the first piece, kept for a reply that fails after it started to stream.
    time_to_first_token: float | None = None
    # All the model said (handoff marker removed), shown to visitors or not.
    model_text: str = ""


def reply_generate(*, visitor_message_id: int) -> Message | None:
    """Moderate one visitor message and, if the bot answers, answer it, exactly once.

    Once the streaming reply row exists, every path ends with it complete, failed or
    withdrawn: a reply left `streaming` would keep the visitor waiting forever.
    """
    question = Message.objects.select_related("conversation__site").get(pk=visitor_message_id)
    try:
        return _generate(question, visitor_message_id)
    finally:
        _slot_given_back(question)


def _slot_given_back(question: Message) -> None:
    """Give back the site's streaming slot the message took when it was admitted
    (ratelimit.py), also when no reply was written (a handoff, a flagged message). A
    reply that ended gave it back already; one still streaming (another copy of this
    task writes it) keeps it until it ends."""
    try:
        if Message.objects.filter(reply_to=question, status=Message.Status.STREAMING).exists():
            return
    except DatabaseError:
        pass  # a slot given back early costs less than one held until it expires
    ratelimit.release_for_message(
        site_id=question.conversation.site_id,
        conversation_id=question.conversation_id,
        client_id=question.client_id,
    )


def _generate(question: Message, visitor_message_id: int) -> Message | None:
    conversation = question.conversation
    site = conversation.site
    moderator = moderation.moderator_for(site)
    verdict, decision = _visitor_message_checked(question, moderator)
    if not services.bot_answers_question(question, conversation):
        if decision.requested:
            # A person has it already: a more urgent reason still raises the ticket.
            services.conversation_handoff(conversation_id=conversation.pk, decision=decision)
        return None
    if decision.requested:
        return _hand_off_before_answering(question, verdict, decision)
    knowledge = _knowledge_for(question)
    if knowledge.missing:
        return _no_knowledge(question)

    model = site.model or settings.LLM_MODEL
    reply = services.reply_start(
        visitor_message_id=visitor_message_id, model=model, sources=knowledge.sources
    )
    if reply is None:
        return None
    leases.hold(reply.pk)
    try:
        return _answer(reply, question, site, moderator, knowledge, model)
    finally:
        leases.release(reply.pk)


def _answer(reply, question, site, moderator, knowledge, model) -> Message:
    conversation = question.conversation
    started = time.monotonic()
    try:
        system_prompt = system_prompt_for(
            site_prompt=site.system_prompt,
            canary=site.prompt_canary,
            handoff_tool=settings.LLM_HANDOFF_TOOL,
        )
        # Quoting an article is not a prompt leak: the detector sees the prompt
        # without the knowledge.
        leak = LeakDetector(system_prompt=system_prompt, canary=site.prompt_canary)
        system_prompt = with_knowledge(
            system_prompt, knowledge.hits, handoff_tool=settings.LLM_HANDOFF_TOOL
        )
        history = selectors.prompt_history(conversation.pk, question.seq)
        request = ChatRequest(
            model=model,
            messages=build_messages(
                system_prompt=system_prompt,
                history=history,
                budget=settings.LLM_CONTEXT_TOKENS,
                model=model,
            ),
            temperature=site.temperature,
            max_tokens=site.max_tokens,
            tools=[handoff.HANDOFF_TOOL] if settings.LLM_HANDOFF_TOOL else None,
        )
        checker = AnswerChecker(moderator, leak)
        release = _release_for(site, checker)
        # Hold no database connection for the seconds the model takes.
        connection.close()
        outcome = background_loop.run(
            relay(
                request, conversation_id=reply.conversation_id, reply_id=reply.pk, release=release
            ),
            timeout=settings.REPLY_TIME_LIMIT + 5,
        )
        # The whole answer is checked once more before it counts as complete.
        final = _answer_verdict(outcome, release, checker, site)
        if final.stop is not None:
            # A withdrawn answer is kept for staff, but not a leaked canary or prompt:
            # agents may not see the prompt, and nobody may see the canary.
            outcome = dataclasses.replace(
                outcome,
                model_text=leak.redact(outcome.model_text),
                text_so_far=leak.redact(outcome.text_so_far),
            )
        close_old_connections()
        try:
            stored, decision = _with_db_retries(lambda: _store(reply, request, outcome, final))
        except DB_AWAY as error:
            raise _StoreAbandoned from error
    except _StoreAbandoned:
        # The database stayed away for DB_RETRY_SECONDS. Storing a failure would fail
        # the same way: the reply stays `streaming` with its text in Redis, its lease
        # lapses when this task ends, and the first sweeps after the database is back
        # fail it with that text (`reply_failed`).
        logger.exception("reply %s could not be stored; the sweep will end it", reply.pk)
        raise
    except Exception:
        logger.exception("reply %s broke; storing it as failed", reply.pk)
        close_old_connections()
        decision = handoff.NONE
        stored = _with_db_retries(
            lambda: services.reply_fail(
                reply_id=reply.pk,
                text_so_far=stream_state.text_so_far(reply.pk),
                error_code="internal",
                detail="The assistant could not finish this reply. Please try again.",
                time_to_first_token_ms=None,
                total_time_ms=round((time.monotonic() - started) * 1000),
            )
        )
    if decision.requested:
        _with_db_retries(
            lambda: services.conversation_handoff(
                conversation_id=conversation.pk,
                decision=decision,
                # An empty answer already carries the notice as its text.
                notice=stored.text != site.handoff_notice,
            )
        )
    # Give the connection back before waiting for `done` to go out; the task ends
    # (and is acknowledged) only once it has.
    connection.close()
    events.wait_sent(timeout=10)
    return stored


def _check(checker: AnswerChecker, text: str) -> Verdict:
    return background_loop.run(checker.check(text), timeout=settings.MODERATION_TIMEOUT + 5)


def _visitor_message_checked(
    question: Message, moderator: moderation.Moderator
) -> tuple[Verdict, handoff.Decision]:
    """The visitor message's verdict and handoff decision, worked out once (a
    redelivered task reads them back)."""
    if question.moderation != Message.Moderation.PENDING:
        verdict = Verdict(
            question.moderation,
            tuple(question.moderation_categories),
            dict(question.moderation_scores),
            provider=question.moderation_provider,
        )
        return verdict, handoff.Decision(
            question.handoff_reason,
            _stored_priority(verdict, question.handoff_reason),
        )
    site = question.conversation.site
    verdict = _check(AnswerChecker(moderator), question.text)
    if verdict.status == moderation.UNCHECKED and not _fails_open(site):
        decision = handoff.Decision(handoff.MODERATION_UNAVAILABLE, Ticket.Priority.HIGH)
    else:
        decision = handoff.decide_for_visitor_message(
            text=question.text,
            verdict=verdict,
            topics=site.handoff_topics,
            earlier_questions=selectors.visitor_texts_before(
                question.conversation_id, question.seq
            ),
        )
    services.message_moderated(message_id=question.pk, verdict=verdict, decision=decision)
    return verdict, decision


@dataclass(frozen=True)
class Knowledge:
    hits: list
    # The site has articles, the question has substance, and none answers it.
    missing: bool = False

    @property
    def sources(self) -> list[dict]:
        """The articles the answer draws on, once each, best first."""
        seen: dict[int, dict] = {}
        for hit in self.hits:
            if hit.article_id not in seen:
                seen[hit.article_id] = {"id": hit.article_id, "title": hit.title, "url": hit.url}
        return list(seen.values())


def _knowledge_for(question: Message) -> Knowledge:
    site_id = question.conversation.site_id
    if not retrieval.has_knowledge(site_id):
        return Knowledge([])  # a site without articles: the model answers on its own
    recent = selectors.visitor_texts_before(question.conversation_id, question.seq, limit=1)
    query = retrieval.query_for(question.text, recent)
    if not retrieval.content_words(query):
        return Knowledge([])  # "hi", "thanks": nothing to look up
    hits = retrieval.retrieve(site_id=site_id, query=query)
    return Knowledge(hits, missing=not hits)


def _no_knowledge(question: Message) -> Message | None:
    """Nothing in the site's articles answers this: say so and bring in a person,
    rather than let the model guess."""
    return _reply_and_hand_off(question, NO_KNOWLEDGE_REPLY, handoff.Decision(handoff.NO_KNOWLEDGE))


def _stored_priority(verdict: Verdict, reason: str) -> int:
    if verdict.urgent:
        return Ticket.Priority.URGENT
    if verdict.flagged or reason == handoff.MODERATION_UNAVAILABLE:
        return Ticket.Priority.HIGH
    return Ticket.Priority.NORMAL


def _hand_off_before_answering(
    question: Message, verdict: Verdict, decision: handoff.Decision
) -> Message | None:
    """A message that goes to a person without reaching the model: a flagged or
    unchecked one gets the site's reply in the bot's place; any other (the visitor
    asked, a topic, a repeat) gets the plain handoff notice."""
    site = question.conversation.site
    text = None
    if verdict.self_harm:
        text = site.self_harm_reply
    elif verdict.flagged and "secrets" in verdict.categories:
        text = site.secrets_reply
    elif verdict.flagged:
        text = site.flagged_input_reply
    elif verdict.status == moderation.UNCHECKED:
        text = DEFAULT_UNCHECKED_NOTICE
    return _reply_and_hand_off(question, text, decision)


def _reply_and_hand_off(
    question: Message, text: str | None, decision: handoff.Decision
) -> Message | None:
    """Answer with a fixed text (no model), if any, then hand the conversation over;
    without a text the handoff's notice tells the visitor."""
    reply = None
    if text is not None:
        reply = services.reply_start(visitor_message_id=question.pk, model="")
        if reply is not None:
            reply = services.reply_complete(
                reply_id=reply.pk,
                text=text,
                prompt_tokens=0,
                completion_tokens=0,
                usage_estimated=False,
                time_to_first_token_ms=None,
                total_time_ms=0,
                verdict=Verdict(moderation.PASSED, provider="site"),
                decision=decision,
            )
    services.conversation_handoff(
        conversation_id=question.conversation_id, decision=decision, notice=reply is None
    )
    connection.close()
    events.wait_sent(timeout=10)
    return reply


def _fails_open(site) -> bool:
    """Unchecked text is shown: the site chose so, or moderation is switched off."""
    return site.moderation_fail_open or not moderation.enabled()


def _release_for(site, checker: AnswerChecker) -> FreeRelease:
    if site.moderation_mode == site.ModerationMode.GATE and moderation.enabled():
        return Gate(
            checker,
            fail_open=site.moderation_fail_open,
            window_chars=settings.MODERATION_WINDOW_CHARS,
            context_chars=settings.MODERATION_CONTEXT_CHARS,
        )
    return FreeRelease(checker.leak)


@dataclass(frozen=True)
class FinalCheck:
    verdict: Verdict
    stop: Stop | None
    handoff_signal: bool


def _answer_verdict(
    outcome: RelayOutcome, release: FreeRelease, checker: AnswerChecker, site
) -> FinalCheck:
    """The verdict on the whole answer (or, for a failed one, on what was shown)."""
    signal = release.marker.found or (
        outcome.result is not None and "handoff_to_human" in outcome.result.tool_calls
    )
    if release.stopped is not None:
        return FinalCheck(release.stopped.verdict, release.stopped, signal)
    text = release.model_text if outcome.error is None else outcome.text_so_far
    if not text.strip():
        return FinalCheck(Verdict(moderation.PASSED, provider="empty"), None, signal)
    verdict = background_loop.run(checker.check(text), timeout=settings.MODERATION_TIMEOUT + 5)
    return FinalCheck(verdict, stop_for(verdict, fail_open=_fails_open(site)), signal)


def _stop_decision(stop: Stop) -> handoff.Decision:
    if stop.code == LEAK_CODE:
        return handoff.Decision(handoff.PROMPT_LEAK, Ticket.Priority.HIGH)
    if stop.code == UNCHECKED_CODE:
        return handoff.Decision(handoff.MODERATION_UNAVAILABLE, Ticket.Priority.HIGH)
    return handoff.moderation_decision(stop.verdict, of="the answer")


def _with_db_retries(store):
    """Storing an outcome outlives a database outage (a restart, a failover) of up to
    DB_RETRY_SECONDS. The reply's lease is renewed meanwhile (in Redis), so no sweep
    fails it, and the visitor gets `done` as soon as the database is back."""
    deadline = time.monotonic() + settings.DB_RETRY_SECONDS
    attempt = 0
    while True:
        try:
            return store()
        except DB_AWAY as error:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if attempt == 1 or attempt % 10 == 0:
                logger.warning(
                    "storing a reply failed (%s); retrying for %.0f s more",
                    type(error).__name__,
                    left,
                )
            close_old_connections()
            connection.close()
            # Short waits: while the database is away the pool fails at once (one
            # caller at a time waits for it), so retrying is cheap, and the first
            # retry after it is back succeeds.
            time.sleep(min(1.0, 0.25 * attempt, left))


def _store(
    reply: Message, request: ChatRequest, outcome: RelayOutcome, final: FinalCheck
) -> tuple[Message, handoff.Decision]:
    result = outcome.result
    ttft = result.time_to_first_token if result else outcome.time_to_first_token
    ttft_ms = round(ttft * 1000) if ttft is not None else None
    total_ms = round(outcome.elapsed * 1000)
    site = reply.conversation.site
    if final.stop is not None:
        # Withdrawn: visitors lose the text; staff keep all the model said.
        decision = _stop_decision(final.stop)
        text = outcome.model_text if outcome.error is None else outcome.text_so_far
        logger.warning("reply %s withdrawn: %s", reply.pk, decision.reason)
        stored = services.reply_complete(
            reply_id=reply.pk,
            text=text,
            **_usage(request, result, text),
            time_to_first_token_ms=ttft_ms,
            total_time_ms=total_ms,
            verdict=final.verdict,
            decision=decision,
            withdrawn_code=final.stop.code,
        )
    elif outcome.error is not None:
        logger.warning("reply %s failed: %s (%s)", reply.pk, outcome.error, outcome.error.code)
        decision = (
            handoff.Decision(handoff.TWO_FAILURES)
            if outcome.error.code != "taken_over"
            and selectors.previous_reply_failed(reply.conversation_id, reply.seq)
            else handoff.NONE
        )
        stored = services.reply_fail(
            reply_id=reply.pk,
            text_so_far=outcome.text_so_far,
            error_code=outcome.error.code,
            detail="The assistant could not finish this reply. Please try again.",
            time_to_first_token_ms=ttft_ms,
            total_time_ms=total_ms,
            verdict=final.verdict,
            decision=decision,
        )
    else:
        assert result is not None
        decision = (
            handoff.Decision(handoff.MODEL_CANNOT_HELP) if final.handoff_signal else handoff.NONE
        )
        text = outcome.model_text
        if not text.strip() and decision.requested:
            text = site.handoff_notice
        stored = services.reply_complete(
            reply_id=reply.pk,
            text=text,
            **_usage(request, result, text),
            time_to_first_token_ms=ttft_ms,
            total_time_ms=total_ms,
            verdict=final.verdict,
            decision=decision,
        )
    try:
        background_loop.run(stream_state.forget(reply.pk), timeout=5)
    except Exception:  # the keys expire on their own
        logger.warning("could not drop the stream snapshot of reply %s", reply.pk)
    return stored, decision


def _usage(request: ChatRequest, result: ChatResult | None, text: str) -> dict:
    if result and result.prompt_tokens is not None and result.completion_tokens is not None:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "usage_estimated": False,
        }
    return {
        "prompt_tokens": tokens.count_messages(request.messages, request.model),
        "completion_tokens": tokens.count(text, request.model),
        "usage_estimated": True,
    }


async def relay(
    request: ChatRequest,
    *,
    conversation_id: object,
    reply_id: int,
    release: FreeRelease | None = None,
) -> RelayOutcome:
    """Stream the model's reply to the conversation's clients, coalescing pieces.

    `release` decides what visitors may see and when (the moderation gate holds
    text back until it passes; a stopped gate ends the stream). The first piece
    goes out at once (it sets the visitor's time to first token); later ones are
    gathered for STREAM_COALESCE_MS so a fast model does not cost a websocket frame
    and a Redis round trip per token.
    """
    release = release if release is not None else FreeRelease()
    started = time.monotonic()
    window = settings.STREAM_COALESCE_MS / 1000
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    sent: list[str] = []
    first_piece_after: float | None = None

    def on_piece(piece: str) -> None:
        nonlocal first_piece_after
        if first_piece_after is None:
            first_piece_after = time.monotonic() - started
        queue.put_nowait(piece)

    async def produce() -> ChatResult:
        try:
            return await llm_client().stream_chat(request, on_piece)
        finally:
            queue.put_nowait(None)

    def outcome(result: ChatResult | None, error: LLMError | None) -> RelayOutcome:
        return RelayOutcome(
            result,
            error,
            "".join(sent),
            index,
            time.monotonic() - started,
            first_piece_after,
            model_text=release.model_text,
        )

    producer = asyncio.create_task(produce())
    # The reply's start (`message`, streaming) was queued on commit; it must reach
    # clients before the first delta.
    start_sent = asyncio.ensure_future(events.flushed())
    index = 0
    pending: list[str] = []
    deadline = 0.0
    finished = False
    try:
        async with asyncio.timeout(settings.REPLY_TIME_LIMIT):
            while not finished:
                if pending:
                    try:
                        piece = await asyncio.wait_for(
                            queue.get(), max(0.0, deadline - time.monotonic())
                        )
                    except TimeoutError:
                        piece = ""
                else:
                    piece = await queue.get()
                if piece is None:
                    finished = True
                    text = await release.finish()
                else:
                    text = await release.feed(piece) if piece else ""
                if release.stopped is not None:
                    # Moderation stopped the answer: nothing more reaches visitors.
                    producer.cancel()
                    pending.clear()
                    return outcome(None, None)
                if text:
                    pending.append(text)
                    if index > 0 and len(pending) == 1:
                        deadline = time.monotonic() + window
                if pending and (finished or index == 0 or time.monotonic() >= deadline):
                    if index == 0:
                        await start_sent
                    joined = "".join(pending)
                    pending.clear()
                    await events.send_delta(
                        conversation_id,
                        reply_id,
                        index,
                        joined,
                        # Joined only if Redis lost the snapshot (a restart).
                        text_before=lambda: "".join(sent),
                    )
                    sent.append(joined)
                    index += 1
            result = await producer
        return outcome(result, None)
    except LLMError as error:
        return outcome(None, error)
    except stream_state.Cancelled:
        producer.cancel()
        return outcome(
            None, LLMError("taken_over", "a person took the conversation over", permanent=True)
        )
    except TimeoutError:
        producer.cancel()
        return outcome(
            None,
            LLMError("timeout", f"reply exceeded {settings.REPLY_TIME_LIMIT}s", permanent=False),
        )
    except Exception as exc:  # a broken broadcast must still end in a stored outcome
        producer.cancel()
        logger.exception("relay of reply %s broke", reply_id)
        return outcome(None, LLMError("internal", f"{type(exc).__name__}: {exc}", permanent=False))
