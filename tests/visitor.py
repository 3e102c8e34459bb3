"""A visitor as the protocol sees one: the HTTP API plus a websocket session."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import websockets

ORIGIN = "https://shop.example.com"


class Visitor:
    def __init__(self, http_url: str, ws_url: str, site_key: str, origin: str | None = ORIGIN):
        self.http_url = http_url
        self.ws_url = ws_url
        self.site_key = site_key
        self.origin = origin
        self.token: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Origin": self.origin} if self.origin else {}

    def start(self, **body: Any) -> dict[str, Any]:
        """POST /api/v1/conversations; remembers the visitor token."""
        payload = {"site_key": self.site_key, **body}
        if self.token and "visitor_token" not in body:
            payload["visitor_token"] = self.token
        response = httpx.post(
            f"{self.http_url}/api/v1/conversations", json=payload, headers=self._headers()
        )
        assert response.status_code == 201, response.text
        data = response.json()
        self.token = data["visitor_token"]
        return data

    def messages(self, conversation_id: str, after_seq: int = 0, token: str | None = None):
        return httpx.get(
            f"{self.http_url}/api/v1/conversations/{conversation_id}/messages",
            params={"after_seq": after_seq},
            headers={**self._headers(), "Authorization": f"Bearer {token or self.token}"},
        )

    def socket(self, conversation: dict[str, Any], **kwargs: Any) -> Socket:
        return Socket(
            self.ws_url + conversation["websocket_url"],
            token=kwargs.pop("token", self.token),
            origin=kwargs.pop("origin", self.origin),
            **kwargs,
        )


class Socket:
    """An async context manager: connects, says hello, and reads events."""

    def __init__(
        self, url: str, *, token: str | None, origin: str | None, last_seq: int = 0,
        hello: bool = True,
    ):  # fmt: skip
        self.url = url
        self.token = token
        self.origin = origin
        self.last_seq = last_seq
        self.say_hello = hello
        self.events: list[dict[str, Any]] = []
        self.ready: dict[str, Any] | None = None

    async def __aenter__(self) -> Socket:
        self.ws = await websockets.connect(self.url, origin=self.origin, max_size=None)
        if self.say_hello:
            await self.send({"type": "hello", "token": self.token, "last_seq": self.last_seq})
            self.ready = await self.recv()
            assert self.ready["type"] == "ready", self.ready
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def say(self, text: str, client_id: str | None = None) -> str:
        client_id = client_id or str(uuid.uuid4())
        await self.send({"type": "message", "text": text, "client_id": client_id})
        return client_id

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.events.append(event)
        return event

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> list[dict[str, Any]]:
        """Events up to and including the first that satisfies predicate."""
        seen: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(timeout=max(0.01, deadline - loop.time()))
            seen.append(event)
            if predicate(event):
                return seen

    async def reply(self, timeout: float = 20) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Events until an assistant reply is done; returns (events, done message)."""
        events = await self.until(
            lambda e: e["type"] == "done" and e["message"]["role"] == "assistant", timeout
        )
        return events, events[-1]["message"]

    async def closed_code(self, timeout: float = 15) -> int | None:
        """Wait for the server to close the socket; its close code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


def deltas_of(events: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "delta" and e["message_id"] == message_id]


def assembled(events: list[dict[str, Any]], message_id: str) -> str:
    return "".join(e["text"] for e in deltas_of(events, message_id))


def run(coro):
    return asyncio.run(coro)
