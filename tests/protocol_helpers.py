"""Helpers for the protocol tests: raw handshakes, pings, stored state, rate-limit windows."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets
from websockets.exceptions import InvalidStatus

from tests.visitor import ORIGIN, Socket

FOREIGN_ORIGIN = "https://evil.example.net"


def create_conversation(
    http_url: str,
    body: Any = None,
    *,
    origin: str | None = ORIGIN,
    content: bytes | None = None,
) -> httpx.Response:
    """POST /api/v1/conversations with a JSON body (or raw bytes as `content`).

    The body is encoded here, with escapes, so it can carry what httpx cannot
    encode itself (a lone surrogate such as "\\ud800").
    """
    headers = {"Origin": origin} if origin else {}
    headers["Content-Type"] = "application/json"
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(f"{http_url}/api/v1/conversations", content=content, headers=headers)


async def handshake_status(url: str, origin: str | None) -> int | None:
    """The HTTP status that refused a websocket handshake; None when it was accepted."""
    try:
        async with websockets.connect(url, origin=origin, open_timeout=10):
            return None
    except InvalidStatus as refused:
        return refused.response.status_code


async def frames_until_closed(socket: Socket, timeout: float = 15) -> tuple[list[Any], int | None]:
    """Every frame the server sends until it closes the socket, and its close code."""
    frames: list[Any] = []
    try:
        while True:
            frames.append(await asyncio.wait_for(socket.ws.recv(), timeout))
    except websockets.ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


async def events_before_pong(socket: Socket) -> list[dict[str, Any]]:
    """Send a ping; every event received before its pong (proves the socket is open)."""
    await socket.send({"type": "ping"})
    events = await socket.until(lambda e: e["type"] == "pong")
    return events[:-1]


def is_visitor_message(event: dict[str, Any]) -> bool:
    return event["type"] == "message" and event["message"]["role"] == "visitor"


def is_assistant_done(event: dict[str, Any]) -> bool:
    return event["type"] == "done" and event["message"]["role"] == "assistant"


def stored_seqs(conversation_id: str) -> list[int]:
    """Every seq persisted in a conversation (messages and status changes), sorted."""
    from conversations.models import Message, StatusChange

    seqs = [
        *Message.objects.filter(conversation_id=conversation_id).values_list("seq", flat=True),
        *StatusChange.objects.filter(conversation_id=conversation_id).values_list("seq", flat=True),
    ]
    return sorted(seqs)


def away_from_window_edge(window: int, margin: float) -> None:
    """Wait out a fixed rate-limit window that ends within `margin` seconds, so a burst
    of requests all lands in one window and the limit is hit deterministically."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.1)
