"""The visitor websocket (docs/protocol.md): validates frames and calls services."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from channels.db import database_sync_to_async as _channels_database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, transaction

from conversations import (
    events,
    frames,
    ratelimit,
    selectors,
    services,
    slow_readers,
    stream_state,
    visitors,
)
from conversations.client_address import from_scope
from conversations.models import Conversation, Message
from conversations.serializers import message_dict, status_event
from conversations.text import storable

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
# RFC 6455 "Try Again Later": the server could not complete the hello.
CLOSE_TRY_AGAIN = 1013
TYPING_REPEAT_SECONDS = 3.0


def database_sync_to_async(func):
    """Channels' database_sync_to_async, on the loop's small thread pool.

    The default (thread_sensitive) runs every consumer's ORM call of the process on
    one shared thread, so a burst of visitor messages queues there one by one
    (seconds at a few hundred at once). Each call is self-contained (its own
    connection, closed after it), so it can run on any thread.
    """
    return _channels_database_sync_to_async(func, thread_sensitive=False)


def _origin(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1")
    return None


class VisitorConsumer(AsyncWebsocketConsumer):
    conversation: Conversation | None = None
    ready = False
    joined = False
    outbox: slow_readers.Outbox | None = None

    async def connect(self) -> None:
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.address = from_scope(self.scope)
        self.group = events.group_name(self.conversation_id)
        # Filters that keep a resumed client from seeing anything twice.
        self.snapshot_seq = 0
        self.final_in_snapshot: set[str] = set()
        self.next_delta: dict[str, int] = {}
        try:
            uuid.UUID(self.conversation_id)
        except ValueError:
            await self.close()
            return
        try:
            self.conversation = await database_sync_to_async(selectors.conversation_by_id)(
                self.conversation_id
            )
        except DatabaseError as exc:
            # The database is away: accept only to close with "try again later",
            # which a client can act on; a refused handshake (500) it cannot.
            logger.error("conversation %s: %s on connect", self.conversation_id, type(exc).__name__)
            await self.accept()
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        origin = _origin(self.scope)
        if self.conversation is not None:
            if origin is None and not settings.DEBUG:
                await self.close()
                return
            if origin is not None and not self.conversation.site.allows_origin(origin):
                await self.close()
                return
        await self.accept()
        self.hello_deadline = asyncio.get_running_loop().call_later(
            settings.WS_HELLO_TIMEOUT, lambda: asyncio.ensure_future(self._hello_timed_out())
        )

    async def dispatch(self, message: dict[str, Any]) -> None:
        if self.outbox is not None and self.outbox.gave_up:
            # The reader fell WS_SEND_TIMEOUT behind (slow_readers.py); under uvicorn
            # the socket is reset and a disconnect follows, elsewhere this lets go.
            await self.disconnect(1011)
            raise StopConsumer
        # Channels runs close_old_connections on its one shared sync thread before
        # every handler; for group events (every streamed delta) that is a thread hop
        # queued behind other work, which delayed deltas by seconds under load. The
        # group handler touches no database, so it skips that step.
        if message["type"] == events.HANDLER:
            await self.conversation_event(message)
            return
        await super().dispatch(message)

    async def _hello_timed_out(self) -> None:
        if not self.ready:
            await self.close(code=CLOSE_UNAUTHORIZED)

    async def disconnect(self, code: int) -> None:
        if self.outbox is not None:
            self.outbox.cancel()
        deadline = getattr(self, "hello_deadline", None)
        if deadline is not None:
            deadline.cancel()
        # Also after a hello that failed half-way: the layer keeps a subscription
        # for every channel it was told about until it is told to drop it.
        if self.joined:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            if not self.ready:
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            await self._error("bad_request", "Binary frames are not accepted.")
            return
        try:
            frame = frames.parse(text_data)
            if not self.ready:
                if frame["type"] != "hello":
                    await self.close(code=CLOSE_UNAUTHORIZED)
                    return
                await self._hello(frames.hello(frame))
                return
            handler = {
                "message": self._message,
                "handoff": self._handoff,
                "ping": self._ping,
                "typing": self._typing,
                "hello": self._hello_again,
            }.get(frame["type"])
            if handler is None:
                raise frames.FrameError("bad_request", f"Unknown type {frame['type'][:40]!r}.")
            await handler(frame)
        except frames.FrameError as error:
            if not self.ready:
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            await self._error(error.code, error.detail, **_client_id_of(frame_or_none(text_data)))
        except Exception as exc:
            # The database or Redis is down: say so and keep the socket; the client
            # resends (same client_id), and nothing acknowledged is lost.
            logger.error(
                "conversation %s: %s while handling a frame",
                self.conversation_id,
                type(exc).__name__,
                exc_info=not isinstance(exc, DatabaseError),
            )
            if not self.ready:
                await self.close(code=CLOSE_TRY_AGAIN)
                return
            await self._error(
                "unavailable",
                "The service is briefly unavailable; try again.",
                **_client_id_of(frame_or_none(text_data)),
            )

    # --- Client frames ---------------------------------------------------------

    async def _hello(self, hello: frames.Hello) -> None:
        conversation = self.conversation
        if conversation is None or not visitors.owns(hello.token, conversation.visitor_hash):
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.visitor_hash = conversation.visitor_hash
        # Join first, then read: an event published in between is both in the
        # snapshot and queued for us, and the filters below drop the second copy.
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined = True
        conversation, rows, streaming = await database_sync_to_async(_resume_rows)(
            self.conversation_id, hello.last_seq
        )
        # Everything the replay needs is read before the socket counts as ready, so
        # a failure here closes it with "try again" instead of a partial replay.
        replay: list[dict[str, Any]] = []
        for row in [*rows, *streaming]:
            if isinstance(row, Message):
                replay.append({"type": "message", "message": await self._resumed(row)})
            else:
                replay.append(status_event(row))
        self.conversation = conversation
        self.ready = True
        self.hello_deadline.cancel()
        self.snapshot_seq = conversation.seq
        await self._send(
            {
                "type": "ready",
                "conversation": {"id": str(conversation.pk), "status": conversation.status},
                "last_seq": conversation.seq,
            }
        )
        for event in replay:
            await self._send(event)

    async def _resumed(self, message: Message) -> dict[str, Any]:
        if message.status != Message.Status.STREAMING:
            self.final_in_snapshot.add(str(message.pk))
            return message_dict(message)
        text, next_index = await stream_state.snapshot(message.pk)
        self.next_delta[str(message.pk)] = next_index
        data = message_dict(message, text_so_far=text)
        data["next_index"] = next_index
        return data

    async def _hello_again(self, frame: dict[str, Any]) -> None:
        raise frames.FrameError("bad_request", "Already said hello on this socket.")

    async def _message(self, frame: dict[str, Any]) -> None:
        visitor_text = frames.visitor_text(frame)
        client_id = visitor_text.client_id or f"server-{uuid.uuid4()}"
        existing = await database_sync_to_async(selectors.message_by_client_id)(
            self.conversation_id, client_id
        )
        if existing is not None:
            # A resend (e.g. after a reconnect) is not a new message: a looser limit
            # of its own, since each one may queue the reply again.
            if not await self._within_resend_limit(client_id):
                return
            stored = await database_sync_to_async(services.message_resend)(message=existing)
        else:
            admitted = await self._admitted(client_id)
            if admitted is None:
                return
            try:
                stored = await database_sync_to_async(services.message_create_from_visitor)(
                    conversation_id=self.conversation_id,
                    text=visitor_text.text,
                    client_id=client_id,
                )
            except services.ConversationClosed:
                await ratelimit.arelease(admitted.slot)
                await self._error(
                    "conversation_closed",
                    "This conversation is closed; start a new one.",
                    client_id=client_id,
                )
                return
            except Exception:
                # Not stored (the client resends): no reply will need the slot.
                await ratelimit.arelease(admitted.slot)
                raise
            if not stored.reply_queued:
                # No reply comes until the client resends.
                await ratelimit.arelease(admitted.slot)
        if not stored.created:
            await self._send({"type": "message", "message": message_dict(stored.message)})
        if not stored.reply_queued:
            await self._error(
                "unavailable",
                "Your message is saved, but the assistant cannot be reached right now; "
                "send it again (same client_id) to retry.",
                client_id=client_id,
            )
        # A new message's echo reaches this socket through the group, in seq order.

    async def _within_resend_limit(self, client_id: str | None) -> bool:
        # Resends and handoffs: generous for a client healing after a reconnect,
        # bounded for one that loops.
        limit = 3 * settings.RATE_VISITOR_MESSAGES_PER_MINUTE
        verdict = await ratelimit.acheck(
            [ratelimit.Window("resend", self.visitor_hash, limit, 60, name="resends")]
        )
        if not verdict.allowed:
            await self._rate_limited(verdict, client_id)
        return verdict.allowed

    async def _admitted(self, client_id: str) -> ratelimit.Verdict | None:
        """Count a new message against every limit (docs/protocol.md, Limits); None
        when one refused it, and the client was told. An admitted message may hold
        one of the site's streaming slots (`verdict.slot`) until its reply ends."""
        visitor_limit = settings.RATE_VISITOR_MESSAGES_PER_MINUTE
        address_limit = settings.RATE_ADDRESS_MESSAGES_PER_MINUTE
        # The visitor's own limits first: a flood is refused without a database read.
        verdict = await ratelimit.acheck(
            [
                ratelimit.Window(
                    "msg-visitor", self.visitor_hash, visitor_limit, 60, "visitor_messages"
                ),
                ratelimit.Window(
                    "msg-address", self.address, address_limit, 60, "address_messages"
                ),
            ]
        )
        if verdict.allowed:
            limits = await database_sync_to_async(ratelimit.message_limits)(self.conversation_id)
            site = limits.site_id
            checks: list[ratelimit.Check] = [
                ratelimit.Window(
                    "msg-site", str(site), limits.messages_per_minute, 60, "site_messages"
                )
            ]
            if limits.bot_answers:
                # Only a message the bot answers costs model tokens and a reply slot.
                holder = ratelimit.stream_holder(self.conversation_id, client_id)
                checks.append(ratelimit.TokenCap(site, limits.tokens_per_day))
                checks.append(ratelimit.StreamSlot(site, holder, limits.concurrent_replies))
            verdict = await ratelimit.acheck(checks)
        if verdict.allowed:
            return verdict
        await self._rate_limited(verdict, client_id)
        return None

    async def _rate_limited(self, verdict: ratelimit.Verdict, client_id: str | None) -> None:
        extra = {"client_id": client_id} if client_id else {}
        await self._error(
            "rate_limited",
            verdict.detail,
            retry_after=verdict.retry_after,
            limit=verdict.limit,
            **extra,
        )

    async def _handoff(self, frame: dict[str, Any]) -> None:
        if not await self._within_resend_limit(None):
            return
        try:
            await database_sync_to_async(services.conversation_request_handoff)(
                conversation_id=self.conversation_id, reason="visitor asked for a person"
            )
        except services.ConversationClosed:
            await self._error(
                "conversation_closed", "This conversation is closed; start a new one."
            )

    async def _ping(self, frame: dict[str, Any]) -> None:
        await self._send({"type": "pong"})

    async def _typing(self, frame: dict[str, Any]) -> None:
        """The visitor is typing (extension): shown to the agent's console."""
        on = frame.get("on")
        if not isinstance(on, bool):
            raise frames.FrameError("bad_request", "`on` must be true or false.")
        # At most one broadcast per state change or per few seconds: a client
        # sending one per keystroke costs nothing more.
        now = asyncio.get_running_loop().time()
        last_on, last_at = getattr(self, "_typing_sent", (None, 0.0))
        if on == last_on and now - last_at < TYPING_REPEAT_SECONDS:
            return
        self._typing_sent = (on, now)
        await events.asend(self.conversation_id, {"type": "typing", "role": "visitor", "on": on})

    # --- Group events ------------------------------------------------------------

    async def conversation_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        kind = event.get("type")
        if kind == "typing" and event.get("role") == "visitor":
            return  # for the agents' consoles, not for the visitor's own sockets
        if kind == "delta":
            # A reply replayed in final form already has all its text.
            if event["message_id"] in self.final_in_snapshot:
                return
            if event["index"] < self.next_delta.get(event["message_id"], 0):
                return
        elif kind == "message" or kind == "status":
            seq = event["message"]["seq"] if kind == "message" else event["seq"]
            if seq <= self.snapshot_seq:
                return
        elif kind == "done":
            message_id = event["message"]["id"]
            self.next_delta.pop(message_id, None)
            if message_id in self.final_in_snapshot:
                return
        await self._send(event)

    # --- Helpers -------------------------------------------------------------------

    async def _send(self, event: dict[str, Any]) -> None:
        # Queued, never awaited: a slow reader must not hold up this consumer, whose
        # channel-layer queue has no limit (slow_readers.py).
        if self.outbox is None:
            self.outbox = slow_readers.Outbox(
                lambda text: self.send(text_data=text), server_send=self.base_send
            )
        self.outbox.put(json.dumps(event, ensure_ascii=False))

    async def _error(self, code: str, detail: str, **extra: Any) -> None:
        await self._send({"type": "error", "code": code, "detail": detail, **extra})


def frame_or_none(raw: str) -> dict[str, Any] | None:
    try:
        return frames.parse(raw)
    except frames.FrameError:
        return None


def _client_id_of(frame: dict[str, Any] | None) -> dict[str, str]:
    """Echo a message frame's client_id in its error, so the client knows which one failed."""
    if frame and frame.get("type") == "message":
        client_id = frame.get("client_id")
        if (
            isinstance(client_id, str)
            and 0 < len(client_id) <= frames.MAX_CLIENT_ID
            and storable(client_id)
        ):
            return {"client_id": client_id}
    return {}


def _resume_rows(conversation_id: str, last_seq: int):
    with transaction.atomic():
        # Every seq is taken under this row's lock (services._next_seq). Holding it
        # makes the seq and the rows one snapshot: an event committed between two of
        # these reads would otherwise be replayed with a seq above ready.last_seq and
        # then delivered again by the group.
        conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
        rows = selectors.events_after(conversation_id, last_seq)
        seen = {row.pk for row in rows if isinstance(row, Message)}
        # A reply still streaming is resent even if the client counted its seq, so a
        # client that dropped mid-reply gets the text so far and the rest.
        streaming = [m for m in selectors.streaming_messages(conversation_id) if m.pk not in seen]
    return conversation, rows, streaming
