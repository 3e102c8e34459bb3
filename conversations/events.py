"""The only module that broadcasts to websocket clients.

Events about rows go out only after their transaction commits (`*_on_commit`), so
no client hears of a message that a rollback then erases. Streaming deltas are not
rows: they are sent at once from the reply's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from conversations import background_loop, stream_state
from conversations.models import Conversation, Message, StatusChange, Ticket
from conversations.serializers import message_dict, note_dict, queue_event, status_event

logger = logging.getLogger(__name__)

HANDLER = "conversation.event"
# Every staff console listens here for conversations that need a person.
AGENTS_GROUP = "agents"


def group_name(conversation_id: object) -> str:
    return f"conversation.{conversation_id}"


async def asend(conversation_id: object, event: dict[str, Any]) -> None:
    # The id travels with the event: a socket that switches conversations (the agent
    # console) may still receive events of the one it left.
    await get_channel_layer().group_send(
        group_name(conversation_id),
        {"type": HANDLER, "event": event, "conversation_id": str(conversation_id)},
    )


class _Outbox:
    """Events of committed rows, sent in order by one task on the process's loop.

    Committing code only queues (it never waits on Redis while it holds a database
    connection); FIFO order keeps a conversation's events in the order their rows
    were committed in this process.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue | None = None
        self.queue_loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None  # held so it is not garbage-collected

    async def _drain(self, queue: asyncio.Queue) -> None:
        while True:
            conversation_id, batch, done = await queue.get()
            for event in batch:
                try:
                    # Long enough for the layer to wait out a Redis restart
                    # (REDIS_RETRY_SECONDS) plus one socket timeout; bounded, so a
                    # half-open connection cannot stall the outbox.
                    async with asyncio.timeout(settings.REDIS_RETRY_SECONDS + 5):
                        if event.get("type") == "queue":
                            await get_channel_layer().group_send(
                                AGENTS_GROUP, {"type": HANDLER, "event": event}
                            )
                        else:
                            await asend(conversation_id, event)
                except Exception:
                    # The rows are committed; a client that missed this heals on its
                    # next hello (or from `done`, which carries the stored text).
                    logger.exception("broadcast to conversation %s failed", conversation_id)
            if done is not None and not done.done():
                done.set_result(None)

    def put(self, conversation_id: object, batch: list[dict[str, Any]]) -> None:
        background_loop.get_loop().call_soon_threadsafe(
            self._put_now, (conversation_id, batch, None)
        )

    def _put_now(self, item: tuple) -> None:
        # Always runs on the loop's thread, so creating the queue here cannot race.
        loop = asyncio.get_running_loop()
        if self.queue is None or self.queue_loop is not loop:
            self.queue, self.queue_loop = asyncio.Queue(), loop
            self.task = loop.create_task(self._drain(self.queue))
        self.queue.put_nowait(item)

    async def flushed(self) -> None:
        """On the loop: wait until everything queued so far has been sent."""
        done = asyncio.get_running_loop().create_future()
        self._put_now((None, [], done))
        await done

    def wait_sent(self, timeout: float) -> None:
        """From a thread: wait until everything queued so far has been sent."""
        try:
            background_loop.run(self.flushed(), timeout=timeout)
        except Exception:
            logger.warning("broadcasts still pending after %ss", timeout)


_outbox = _Outbox()
flushed = _outbox.flushed
wait_sent = _outbox.wait_sent


def send_on_commit(conversation_id: object, *events: dict[str, Any]) -> None:
    transaction.on_commit(lambda: _outbox.put(conversation_id, list(events)))


def message_on_commit(message: Message) -> None:
    send_on_commit(message.conversation_id, {"type": "message", "message": message_dict(message)})


def status_on_commit(change: StatusChange) -> None:
    send_on_commit(change.conversation_id, status_event(change))


def reply_started_on_commit(reply: Message) -> None:
    send_on_commit(
        reply.conversation_id,
        {"type": "typing", "role": "assistant", "on": True},
        {"type": "message", "message": message_dict(reply)},
    )


def reply_finished_on_commit(reply: Message, *, error_detail: str | None = None) -> None:
    events: list[dict[str, Any]] = [
        {"type": "done", "message": message_dict(reply)},
        {"type": "typing", "role": "assistant", "on": False},
    ]
    # A reply cut short because a person took over is not an error to report.
    if reply.status == Message.Status.FAILED and reply.error_code != "taken_over":
        events.append(
            {
                "type": "error",
                "code": "reply_failed",
                "detail": error_detail or "The assistant could not finish this reply.",
                "message_id": str(reply.pk),
            }
        )
    send_on_commit(reply.conversation_id, *events)


def reply_withdrawn_on_commit(reply: Message) -> None:
    """A reply moderation stopped: clients drop its text; `done` carries it as ""."""
    send_on_commit(
        reply.conversation_id,
        {
            "type": "withdrawn",
            "message_id": str(reply.pk),
            "reason": "moderation",
            # Extension: "moderation", "prompt_leak" or "moderation_unavailable".
            "category": reply.error_code,
        },
        {"type": "done", "message": message_dict(reply)},
        {"type": "typing", "role": "assistant", "on": False},
    )


def queue_on_commit(conversation: Conversation, ticket: Ticket | None, *, action: str) -> None:
    """Tell agents' consoles that a conversation changed in the queue: it needs a
    person, more urgently, someone took it, it went back to the bot or closed."""
    send_on_commit(conversation.pk, queue_event(conversation, ticket, action=action))


def note_on_commit(note) -> None:
    """Internal notes go to agents only, never to the conversation's group."""
    send_on_commit(
        note.conversation_id,
        {"type": "queue", "action": "note", "note": note_dict(note),
         "conversation": {"id": str(note.conversation_id)}},
    )  # fmt: skip


async def send_delta(
    conversation_id: object,
    message_id: int,
    index: int,
    text: str,
    *,
    text_before: Callable[[], str] | None = None,
) -> None:
    # The snapshot is written before the broadcast, so a client that joins between
    # the two sees this delta in its snapshot and skips the broadcast copy.
    await stream_state.record_delta(message_id, index, text, text_before=text_before)
    await asend(
        conversation_id,
        {"type": "delta", "message_id": str(message_id), "index": index, "text": text},
    )
