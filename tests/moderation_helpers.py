"""Helpers for the moderation and handoff tests: sites, the agents' feed, frame scans."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.visitor import ORIGIN


def make_site(**fields: Any):
    """A site in the product's defaults (gate mode, offline moderator) unless told."""
    from conversations.models import Site

    values = {
        "name": "Moderated shop",
        "allowed_origins": [ORIGIN],
        "system_prompt": "You are the Moderated shop's support assistant. Be brief and kind.",
        "moderation_provider": Site.ModerationProvider.OFFLINE,
    }
    values.update(fields)
    return Site.objects.create(**values)


class AgentsFeed:
    """Listens, like an agent console, to the channel layer's agents group."""

    async def __aenter__(self) -> AgentsFeed:
        from channels.layers import get_channel_layer

        from conversations.events import AGENTS_GROUP

        self.layer = get_channel_layer()
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(AGENTS_GROUP, self.channel)
        self.events: list[dict[str, Any]] = []
        return self

    async def __aexit__(self, *exc: object) -> None:
        from conversations.events import AGENTS_GROUP

        await self.layer.group_discard(AGENTS_GROUP, self.channel)

    async def next_for(self, conversation_id: str, timeout: float = 15) -> dict[str, Any]:
        """The next queue event about this conversation (others are other tests')."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await asyncio.wait_for(
                self.layer.receive(self.channel), max(0.01, deadline - loop.time())
            )
            event = message["event"]
            self.events.append(event)
            if event["conversation"]["id"] == conversation_id:
                return event


def frames_text(events: list[dict[str, Any]]) -> str:
    """Everything the server sent, as one string, to search for what must not be there."""
    return "\n".join(json.dumps(event, ensure_ascii=False) for event in events)


def chat_requests(llm) -> list[dict[str, Any]]:
    return [r for r in llm.requests if r["path"] == "/v1/chat/completions"]


def ask(visitor, conversation, text: str, *, then_status: bool = False, timeout: float = 20):
    """Say `text` on a fresh socket: the events up to the assistant's `done` (and,
    with then_status, up to the `status` event of the handoff that follows) and the
    done message."""
    from tests.visitor import run

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say(text)
            events, done = await socket.reply(timeout=timeout)
            if then_status:
                events += await socket.until(lambda e: e["type"] == "status")
            return events, done

    return run(scenario())
