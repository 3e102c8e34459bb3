"""One assistant reply, from the visitor's question to the stored answer.

Runs in a Celery task thread: database work happens here, synchronously, and the
stream itself runs on the process's shared event loop (background_loop), so a
worker process streams hundreds of replies at once while each task thread just
waits. The database connection is released while the model streams, so
concurrent replies do not hold one connection each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection

from conversations import background_loop, events, selectors, services, stream_state, tokens
from conversations.llm import ChatRequest, ChatResult, LLMClient, LLMError
from conversations.models import Message
from conversations.prompt import build_messages

logger = logging.getLogger(__name__)

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


def reply_generate(*, visitor_message_id: int) -> Message | None:
    """Answer one visitor message, exactly once.

    Once the streaming reply row exists, every path ends with it complete or
    failed: a reply left `streaming` would keep the visitor waiting forever.
    """
    question = Message.objects.select_related("conversation__site").get(pk=visitor_message_id)
    site = question.conversation.site
    model = site.model or settings.LLM_MODEL
    reply = services.reply_start(visitor_message_id=visitor_message_id, model=model)
    if reply is None:
        return None
    started = time.monotonic()
    try:
        history = selectors.prompt_history(question.conversation_id, question.seq)
        request = ChatRequest(
            model=model,
            messages=build_messages(
                system_prompt=site.system_prompt,
                history=history,
                budget=settings.LLM_CONTEXT_TOKENS,
                model=model,
            ),
            temperature=site.temperature,
            max_tokens=site.max_tokens,
        )
        # Hold no database connection for the seconds the model takes.
        connection.close()
        outcome = background_loop.run(
            relay(request, conversation_id=reply.conversation_id, reply_id=reply.pk),
            timeout=settings.REPLY_TIME_LIMIT + 5,
        )
        close_old_connections()
        stored = _with_db_retries(lambda: _store(reply, request, outcome))
    except Exception:
        logger.exception("reply %s broke; storing it as failed", reply.pk)
        close_old_connections()
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
    # Give the connection back before waiting for `done` to go out; the task ends
    # (and is acknowledged) only once it has.
    connection.close()
    events.wait_sent(timeout=10)
    return stored


def _with_db_retries(store, attempts: int = 5):
    """Storing the outcome outlives a short database outage (a restart, a failover)."""
    for attempt in range(attempts):
        try:
            return store()
        except (DatabaseError, InterfaceError):
            if attempt == attempts - 1:
                raise
            logger.warning("storing a reply failed; retry %d", attempt + 1)
            close_old_connections()
            connection.close()
            time.sleep(min(8.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def _store(reply: Message, request: ChatRequest, outcome: RelayOutcome) -> Message:
    result = outcome.result
    ttft = result.time_to_first_token if result else outcome.time_to_first_token
    ttft_ms = round(ttft * 1000) if ttft is not None else None
    total_ms = round(outcome.elapsed * 1000)
    if outcome.error is not None:
        logger.warning("reply %s failed: %s (%s)", reply.pk, outcome.error, outcome.error.code)
        stored = services.reply_fail(
            reply_id=reply.pk,
            text_so_far=outcome.text_so_far,
            error_code=outcome.error.code,
            detail="The assistant could not finish this reply. Please try again.",
            time_to_first_token_ms=ttft_ms,
            total_time_ms=total_ms,
        )
    else:
        assert result is not None
        estimated = result.prompt_tokens is None or result.completion_tokens is None
        stored = services.reply_complete(
            reply_id=reply.pk,
            text=result.text,
            prompt_tokens=result.prompt_tokens
            if not estimated
            else tokens.count_messages(request.messages, request.model),
            completion_tokens=result.completion_tokens
            if not estimated
            else tokens.count(result.text, request.model),
            usage_estimated=estimated,
            time_to_first_token_ms=ttft_ms,
            total_time_ms=total_ms,
        )
    try:
        background_loop.run(stream_state.forget(reply.pk), timeout=5)
    except Exception:  # the keys expire on their own
        logger.warning("could not drop the stream snapshot of reply %s", reply.pk)
    return stored


async def relay(request: ChatRequest, *, conversation_id: object, reply_id: int) -> RelayOutcome:
    """Stream the model's reply to the conversation's clients, coalescing pieces.

    The first piece goes out at once (it sets the visitor's time to first token);
    later ones are gathered for STREAM_COALESCE_MS so a fast model does not cost a
    websocket frame and a Redis round trip per token.
    """
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
                elif piece:
                    pending.append(piece)
                    if index > 0 and len(pending) == 1:
                        deadline = time.monotonic() + window
                if pending and (finished or index == 0 or time.monotonic() >= deadline):
                    if index == 0:
                        await start_sent
                    text = "".join(pending)
                    pending.clear()
                    await events.send_delta(conversation_id, reply_id, index, text)
                    sent.append(text)
                    index += 1
            result = await producer
        return RelayOutcome(result, None, "".join(sent), index, time.monotonic() - started)
    except LLMError as error:
        return RelayOutcome(
            None, error, "".join(sent), index, time.monotonic() - started, first_piece_after
        )
    except TimeoutError:
        producer.cancel()
        error = LLMError("timeout", f"reply exceeded {settings.REPLY_TIME_LIMIT}s", permanent=False)
        return RelayOutcome(
            None, error, "".join(sent), index, time.monotonic() - started, first_piece_after
        )
    except Exception as exc:  # a broken broadcast must still end in a stored outcome
        producer.cancel()
        logger.exception("relay of reply %s broke", reply_id)
        error = LLMError("internal", f"{type(exc).__name__}: {exc}", permanent=False)
        return RelayOutcome(
            None, error, "".join(sent), index, time.monotonic() - started, first_piece_after
        )
