"""The only module that broadcasts to websocket clients.

Events about rows go out only after their transaction commits (`*_on_commit`), so
no client hears of a message that a rollback then erases. Streaming deltas are not
rows: they are sent at once from the reply's event loop.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from conversations import background_loop, stream_state
from conversations.models import Message, StatusChange
from conversations.serializers import message_dict, status_event

logger = logging.getLogger(__name__)

HANDLER = "conversation.event"


def group_name(conversation_id: object) -> str:
    return f"conversation.{conversation_id}"


async def asend(conversation_id: object, event: dict[str, Any]) -> None:
    await get_channel_layer().group_send(
        group_name(conversation_id), {"type": HANDLER, "event": event}
    )


def _send_now(conversation_id: object, events: list[dict[str, Any]]) -> None:
    async def send_all() -> None:
        for event in events:
            await asend(conversation_id, event)

    try:
        background_loop.run(send_all(), timeout=10)
    except Exception:
        # The rows are committed; a client that missed this heals on its next hello.
        logger.exception("broadcast to conversation %s failed", conversation_id)


def send_on_commit(conversation_id: object, *events: dict[str, Any]) -> None:
    transaction.on_commit(lambda: _send_now(conversation_id, list(events)))


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
    if reply.status == Message.Status.FAILED:
        events.append(
            {
                "type": "error",
                "code": "reply_failed",
                "detail": error_detail or "The assistant could not finish this reply.",
                "message_id": str(reply.pk),
            }
        )
    send_on_commit(reply.conversation_id, *events)


async def send_delta(conversation_id: object, message_id: int, index: int, text: str) -> None:
    # The snapshot is written before the broadcast, so a client that joins between
    # the two sees this delta in its snapshot and skips the broadcast copy.
    await stream_state.record_delta(message_id, index, text)
    await asend(
        conversation_id,
        {"type": "delta", "message_id": str(message_id), "index": index, "text": text},
    )
