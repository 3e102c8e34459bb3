"""The staff websocket behind the live agent console (docs/agent-console.md).

Only logged-in staff with permission to view conversations get in. The socket
listens to the agents' group (the queue) and to the one conversation the agent has
open, and carries the agent's commands to conversations.agent_actions.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from channels.db import database_sync_to_async as _channels_database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from conversations import agent_actions, events, frames, selectors, slow_readers, stream_state
from conversations.models import Conversation
from conversations.services import ConversationClosed
from conversations.text import storable

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
MAX_NOTE_CHARS = 4000


def database_sync_to_async(func):
    return _channels_database_sync_to_async(func, thread_sensitive=False)


def may_use_console(user) -> bool:
    return bool(
        user
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm("conversations.view_conversation")
    )


def may_answer(user) -> bool:
    return may_use_console(user) and user.has_perm("conversations.change_conversation")


class AgentConsumer(AsyncWebsocketConsumer):
    watching: str | None = None
    outbox: slow_readers.Outbox | None = None

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        allowed = await database_sync_to_async(may_use_console)(self.user)
        if not allowed:
            # Accept-then-close gives the browser a close code it can show.
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.can_answer = await database_sync_to_async(may_answer)(self.user)
        await self.accept()
        await self.channel_layer.group_add(events.AGENTS_GROUP, self.channel_name)
        self.joined = True
        queue = await database_sync_to_async(selectors.agent_queue)()
        await self._send({"type": "queue", "items": queue, "me": self.user.pk})

    async def dispatch(self, message: dict[str, Any]) -> None:
        if self.outbox is not None and self.outbox.gave_up:
            # The console stopped reading for WS_SEND_TIMEOUT (slow_readers.py), as a
            # visitor's widget can: the socket is reset, the console reconnects.
            await self.disconnect(1011)
            raise StopConsumer
        await super().dispatch(message)

    async def disconnect(self, code: int) -> None:
        if self.outbox is not None:
            self.outbox.cancel()
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(events.AGENTS_GROUP, self.channel_name)
        if self.watching is not None:
            await self.channel_layer.group_discard(
                events.group_name(self.watching), self.channel_name
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self._error("bad_request", "Binary frames are not accepted.")
            return
        try:
            frame = frames.parse(text_data)
            handler = {
                "open": self._open,
                "take_over": self._take_over,
                "message": self._message,
                "typing": self._typing,
                "note": self._note,
                "hand_back": self._hand_back,
                "close": self._close,
                "ping": self._ping,
            }.get(frame["type"])
            if handler is None:
                raise frames.FrameError("bad_request", f"Unknown type {frame['type'][:40]!r}.")
            await handler(frame)
        except frames.FrameError as error:
            await self._error(error.code, error.detail)
        except agent_actions.NotYours as taken:
            holder = f"{taken.holder} has this conversation." if taken.holder else ""
            await self._error(
                "not_yours",
                holder or f"The conversation is {taken.status}; take it over first.",
                holder=taken.holder,
            )
        except ConversationClosed:
            await self._error("conversation_closed", "This conversation is closed.")
        except Conversation.DoesNotExist:
            # A well-formed id of no conversation: the actions' .get() finds nothing.
            await self._error("not_found", "No such conversation.")
        except Exception as exc:
            logger.error("agent socket: %s handling a frame", type(exc).__name__, exc_info=True)
            await self._error("unavailable", "The server failed to do that; try again.")

    # --- Commands -------------------------------------------------------------------

    async def _open(self, frame: dict[str, Any]) -> None:
        conversation_id = _conversation_id(frame)
        if self.watching is not None and self.watching != conversation_id:
            await self.channel_layer.group_discard(
                events.group_name(self.watching), self.channel_name
            )
        # Join first, then read, as the visitor socket does: nothing falls in between.
        await self.channel_layer.group_add(events.group_name(conversation_id), self.channel_name)
        self.watching = conversation_id
        thread = await database_sync_to_async(selectors.agent_thread)(conversation_id)
        if thread is None:
            await self.channel_layer.group_discard(
                events.group_name(conversation_id), self.channel_name
            )
            self.watching = None
            raise frames.FrameError("not_found", "No such conversation.")
        for message in thread["messages"]:
            if message["status"] == "streaming":
                text, next_index = await stream_state.snapshot(int(message["id"]))
                message["text"], message["next_index"] = text, next_index
        await self._send({"type": "thread", **thread})

    async def _take_over(self, frame: dict[str, Any]) -> None:
        self._require_answer_permission()
        conversation_id = _conversation_id(frame)
        result = await database_sync_to_async(agent_actions.conversation_take_over)(
            conversation_id=conversation_id, agent=self.user
        )
        if result.won:
            await self._send({"type": "taken", "conversation_id": conversation_id})
        else:
            await self._error(
                "already_taken",
                f"{result.holder or 'Another agent'} has this conversation.",
                conversation_id=conversation_id,
                holder=result.holder,
            )

    async def _message(self, frame: dict[str, Any]) -> None:
        self._require_answer_permission()
        conversation_id = _conversation_id(frame)
        text = frames.visitor_text(frame)
        message, created = await database_sync_to_async(agent_actions.agent_message_create)(
            conversation_id=conversation_id,
            agent=self.user,
            text=text.text,
            client_id=text.client_id or f"agent-{uuid.uuid4()}",
        )
        if not created:
            await self._send({"type": "sent", "message_id": str(message.pk)})

    async def _typing(self, frame: dict[str, Any]) -> None:
        conversation_id = _conversation_id(frame)
        on = frame.get("on")
        if not isinstance(on, bool):
            raise frames.FrameError("bad_request", "`on` must be true or false.")
        held = await database_sync_to_async(selectors.held_by)(conversation_id, self.user.pk)
        if held:
            await events.asend(conversation_id, {"type": "typing", "role": "agent", "on": on})

    async def _note(self, frame: dict[str, Any]) -> None:
        self._require_answer_permission()
        conversation_id = _conversation_id(frame)
        text = frame.get("text")
        if not isinstance(text, str) or not text.strip() or not storable(text):
            raise frames.FrameError("bad_request", "A note needs text.")
        if len(text) > MAX_NOTE_CHARS:
            raise frames.FrameError("too_long", f"Notes are at most {MAX_NOTE_CHARS} characters.")
        await database_sync_to_async(agent_actions.note_create)(
            conversation_id=conversation_id, agent=self.user, text=text.strip()
        )

    async def _hand_back(self, frame: dict[str, Any]) -> None:
        self._require_answer_permission()
        await database_sync_to_async(agent_actions.conversation_hand_back)(
            conversation_id=_conversation_id(frame), agent=self.user
        )

    async def _close(self, frame: dict[str, Any]) -> None:
        self._require_answer_permission()
        await database_sync_to_async(agent_actions.conversation_close)(
            conversation_id=_conversation_id(frame), agent=self.user
        )

    async def _ping(self, frame: dict[str, Any]) -> None:
        await self._send({"type": "pong"})

    def _require_answer_permission(self) -> None:
        if not self.can_answer:
            raise frames.FrameError("forbidden", "You may read conversations but not answer them.")

    # --- Group events -----------------------------------------------------------------

    async def conversation_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event.get("type") == "queue":
            await self._send(event)
            return
        # Events of the open conversation; an agent's own typing is not echoed.
        if event.get("type") == "typing" and event.get("role") == "agent":
            return
        if self.watching is None or message.get("conversation_id") != self.watching:
            return  # a late event of a conversation this console has left
        await self._send({"type": "event", "conversation_id": self.watching, "event": event})

    # --- Helpers ----------------------------------------------------------------------

    async def _send(self, event: dict[str, Any]) -> None:
        # Queued, never awaited: a console that stopped reading must not hold up the
        # events of the agents' group (slow_readers.py).
        if self.outbox is None:
            self.outbox = slow_readers.Outbox(
                lambda text: self.send(text_data=text), server_send=self.base_send
            )
        self.outbox.put(json.dumps(event, ensure_ascii=False))

    async def _error(self, code: str, detail: str, **extra: Any) -> None:
        await self._send({"type": "error", "code": code, "detail": detail, **extra})


def _conversation_id(frame: dict[str, Any]) -> str:
    value = frame.get("conversation_id")
    if isinstance(value, str) and len(value) <= 36:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise frames.FrameError("bad_request", "`conversation_id` must be a conversation's id.")
