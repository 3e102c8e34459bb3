"""Agents take conversations over, talk to visitors live, and hand back or close;
the server, not a screen, decides who answers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from conversations.models import Conversation, InternalNote, Message, StatusChange, Ticket
from conversations.tasks import generate_reply
from tests.moderation_helpers import chat_requests
from tests.scripted_llm import Script
from tests.visitor import run


def make_user(django_user_model, username: str, *, agent: bool = True, staff: bool = True):
    from conversations.roles import ensure_agents_group

    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, first_name=username.title(), is_staff=staff
    )
    if agent:
        user.groups.add(ensure_agents_group())
    return user


def session_cookie(user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Console:
    """An agent's console as the staff websocket sees it."""

    def __init__(self, stack, cookie: str):
        self.url = stack.ws_url + "/ws/v1/agent/"
        self.origin = stack.http_url
        self.cookie = cookie
        self.frames: list[dict[str, Any]] = []

    async def __aenter__(self) -> Console:
        headers = {"Cookie": f"sessionid={self.cookie}"} if self.cookie else {}
        self.ws = await websockets.connect(self.url, origin=self.origin, additional_headers=headers)
        self.queue = await self.recv()
        assert self.queue["type"] == "queue", self.queue
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def until(self, predicate, timeout: float = 15) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if predicate(frame):
                return frame


def is_status(status: str):
    return lambda e: e["type"] == "status" and e["status"] == status


def test_an_agent_takes_over_replies_live_and_hands_back(
    stack, llm, site, visitor, django_user_model
):
    agent = make_user(django_user_model, "sam")
    agent_cookie = session_cookie(agent)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    llm.enqueue(Script(tokens=["The", " bot", " again."]), match="back to you")

    async def scenario():
        async with Console(stack, agent_cookie) as console, visitor.socket(conversation) as socket:
            await socket.send({"type": "handoff"})
            queued = await console.until(
                lambda f: f["type"] == "queue" and f.get("action") == "handoff"
            )
            assert queued["conversation"]["id"] == conversation_id
            await console.send({"type": "open", "conversation_id": conversation_id})
            thread = await console.until(lambda f: f["type"] == "thread")
            await console.send({"type": "take_over", "conversation_id": conversation_id})
            await console.until(lambda f: f["type"] == "taken")
            await socket.until(is_status("agent"))
            joined, *_ = reversed(
                await socket.until(
                    lambda e: e["type"] == "message" and "joined" in e["message"]["text"]
                )
            )
            # Typing both ways, then the agent's reply.
            await console.send({"type": "typing", "conversation_id": conversation_id, "on": True})
            agent_typing = (await socket.until(lambda e: e["type"] == "typing"))[-1]
            await socket.send({"type": "typing", "on": True})
            visitor_typing = await console.until(
                lambda f: f["type"] == "event" and f["event"]["type"] == "typing"
            )
            await console.send(
                {"type": "message", "conversation_id": conversation_id, "text": "Hi, Sam here.",
                 "client_id": "agent-1"}
            )  # fmt: skip
            reply = (
                await socket.until(
                    lambda e: e["type"] == "message" and e["message"]["role"] == "agent"
                )
            )[-1]
            # The visitor answers; the bot stays quiet while the agent has it.
            await socket.say("Thanks Sam, my order is 1182")
            await console.until(
                lambda f: (
                    f["type"] == "event"
                    and f["event"]["type"] == "message"
                    and f["event"]["message"]["role"] == "visitor"
                )
            )
            await console.send({"type": "hand_back", "conversation_id": conversation_id})
            await socket.until(is_status("bot"))
            await socket.say("back to you, bot: when will it ship?")
            _, bot = await socket.reply()
            return thread, joined, agent_typing, visitor_typing, reply, bot

    thread, joined, agent_typing, visitor_typing, reply, bot = run(scenario())
    assert thread["conversation"]["status"] == "waiting"
    assert joined["message"]["role"] == "system" and "Sam" in joined["message"]["text"]
    assert agent_typing == {"type": "typing", "role": "agent", "on": True}
    assert visitor_typing["event"] == {"type": "typing", "role": "visitor", "on": True}
    assert reply["message"]["text"] == "Hi, Sam here."
    assert bot["text"] == "The bot again." and bot["status"] == "complete"
    # Only the last question reached the model: none while the agent had it.
    assert len(chat_requests(llm)) == 1
    stored = Message.objects.get(conversation_id=conversation_id, role="agent")
    assert stored.author == agent and stored.client_id == "agent-1"
    changes = list(
        StatusChange.objects.filter(conversation_id=conversation_id).values_list(
            "status", "actor__username"
        )
    )
    assert changes == [("waiting", None), ("agent", "sam"), ("bot", "sam")]
    ticket = Ticket.objects.get(conversation_id=conversation_id)
    assert ticket.assignee == agent and ticket.status == Ticket.Status.RESOLVED


def test_two_agents_claiming_at_once_one_wins(stack, site, visitor, django_user_model):
    sam = make_user(django_user_model, "sam")
    sam_cookie = session_cookie(sam)
    kim = make_user(django_user_model, "kim")
    kim_cookie = session_cookie(kim)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with Console(stack, sam_cookie) as a, Console(stack, kim_cookie) as b:
            claim = {"type": "take_over", "conversation_id": conversation_id}
            await asyncio.gather(a.send(claim), b.send(claim))
            answers = await asyncio.gather(
                a.until(lambda f: f["type"] in ("taken", "error")),
                b.until(lambda f: f["type"] in ("taken", "error")),
            )
            return answers

    for _ in range(3):
        Conversation.objects.filter(pk=conversation_id).update(
            status="waiting", assigned_agent=None
        )
        answers = run(scenario())
        kinds = sorted(answer["type"] for answer in answers)
        assert kinds == ["error", "taken"], answers
        loser = next(answer for answer in answers if answer["type"] == "error")
        winner = Conversation.objects.get(pk=conversation_id).assigned_agent
        assert loser["code"] == "already_taken"
        assert loser["holder"] == winner.first_name
        assert loser["detail"] == f"{winner.first_name} has this conversation."


def test_a_reply_queued_before_the_takeover_is_never_delivered(
    stack, llm, site, visitor, django_user_model
):
    from conversations import agent_actions, services

    agent = make_user(django_user_model, "sam")
    session_cookie(agent)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    # The visitor's message is stored, as the consumer stores it, but its reply task
    # only reaches the worker after the agent took over.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "_queue_reply", lambda message_id: True)
        stored = services.message_create_from_visitor(
            conversation_id=conversation_id, text="Where is my order?", client_id="q-1"
        )
    agent_actions.conversation_take_over(conversation_id=conversation_id, agent=agent)
    generate_reply.apply_async((stored.message.pk,), queue=stack.env["CELERY_QUEUE"])

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stored.message.refresh_from_db()
        if stored.message.moderation != "pending":
            break
        time.sleep(0.1)
    time.sleep(1.0)
    assert stored.message.moderation == "passed", "the worker ran the task"
    assert not Message.objects.filter(conversation_id=conversation_id, role="assistant").exists()
    assert chat_requests(llm) == []


def test_a_reply_streaming_at_the_takeover_stops_before_it(
    stack, llm, site, visitor, django_user_model
):
    from conversations import agent_actions

    agent = make_user(django_user_model, "sam")
    session_cookie(agent)
    llm.enqueue(Script(reply_words=60, token_interval=0.1))
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("Tell me everything about shipping")
            await socket.until(lambda e: e["type"] == "delta")
            await asyncio.to_thread(
                agent_actions.conversation_take_over, conversation_id=conversation_id, agent=agent
            )
            events = await socket.until(is_status("agent"))
            try:
                while True:
                    events.append(await socket.recv(timeout=2))
            except TimeoutError:
                pass
            return events

    events = run(scenario())
    after = events[next(i for i, e in enumerate(events) if is_status("agent")(e)) :]
    assert not [e for e in after if e["type"] == "delta"], "no bot text after the takeover"
    reply = Message.objects.get(conversation_id=conversation_id, role="assistant")
    assert reply.status == "failed" and reply.error_code == "taken_over"
    assert not [e for e in events if e["type"] == "error"], "a takeover is not an error"
    assert reply.text and len(reply.text.split()) < 60


def test_a_closed_conversation_refuses_new_messages(stack, site, visitor, django_user_model):
    agent = make_user(django_user_model, "sam")
    agent_cookie = session_cookie(agent)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with Console(stack, agent_cookie) as console, visitor.socket(conversation) as socket:
            await console.send({"type": "take_over", "conversation_id": conversation_id})
            await socket.until(is_status("agent"))
            await console.send({"type": "close", "conversation_id": conversation_id})
            await socket.until(is_status("closed"))
            await socket.say("one more thing")
            return (await socket.until(lambda e: e["type"] == "error"))[-1]

    error = run(scenario())
    assert error["code"] == "conversation_closed"
    assert Conversation.objects.get(pk=conversation_id).status == "closed"
    assert not Message.objects.filter(conversation_id=conversation_id, text="one more thing")


def test_internal_notes_never_reach_the_visitor(stack, site, visitor, django_user_model):
    agent = make_user(django_user_model, "sam")
    agent_cookie = session_cookie(agent)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with Console(stack, agent_cookie) as console, visitor.socket(conversation) as socket:
            await console.send({"type": "open", "conversation_id": conversation_id})
            await console.until(lambda f: f["type"] == "thread")
            await console.send(
                {"type": "note", "conversation_id": conversation_id, "text": "VIP customer"}
            )
            note = await console.until(lambda f: f.get("action") == "note")
            await socket.send({"type": "ping"})
            await socket.until(lambda e: e["type"] == "pong", timeout=5)
            return note, socket.events

    note, visitor_events = run(scenario())
    assert note["note"]["text"] == "VIP customer" and note["note"]["author"] == "Sam"
    assert "VIP" not in json.dumps(visitor_events)
    assert InternalNote.objects.get(conversation_id=conversation_id).author == agent


def test_only_the_assigned_agent_may_reply(stack, site, visitor, django_user_model):
    sam = make_user(django_user_model, "sam")
    sam_cookie = session_cookie(sam)
    kim = make_user(django_user_model, "kim")
    kim_cookie = session_cookie(kim)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with Console(stack, sam_cookie) as a, Console(stack, kim_cookie) as b:
            await b.send(
                {"type": "message", "conversation_id": conversation_id, "text": "hi",
                 "client_id": "k-0"}
            )  # fmt: skip
            before = await b.until(lambda f: f["type"] == "error")
            await a.send({"type": "take_over", "conversation_id": conversation_id})
            await a.until(lambda f: f["type"] == "taken")
            await b.send(
                {"type": "message", "conversation_id": conversation_id, "text": "hi",
                 "client_id": "k-1"}
            )  # fmt: skip
            after = await b.until(lambda f: f["type"] == "error")
            return before, after

    before, after = run(scenario())
    assert before["code"] == after["code"] == "not_yours"
    assert after["holder"] == "Sam"
    assert not Message.objects.filter(conversation_id=conversation_id, role="agent").exists()


async def _agent_socket_close_code(stack, cookie: str | None, origin: str) -> int | None:
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
    try:
        async with websockets.connect(
            stack.ws_url + "/ws/v1/agent/", origin=origin, additional_headers=headers
        ) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            return None
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except websockets.exceptions.InvalidStatus as refused:
        return refused.response.status_code


def test_non_staff_get_no_console_socket_or_admin(stack, site, django_user_model):
    customer = make_user(django_user_model, "eve", agent=False, staff=False)
    staff_without_group = make_user(django_user_model, "mallory", agent=False, staff=True)
    for user in (customer, staff_without_group, None):
        cookie = session_cookie(user) if user else None
        jar = {"sessionid": cookie} if cookie else {}
        page = httpx.get(f"{stack.http_url}/agent/", cookies=jar, follow_redirects=False)
        if user is None:
            assert page.status_code == 302 and "/admin/login/" in page.headers["location"]
        else:
            assert page.status_code == 403
        assert run(_agent_socket_close_code(stack, cookie, stack.http_url)) == 4403
        if user is staff_without_group:
            continue  # Django's admin lets staff in, but shows them nothing
        admin = httpx.get(f"{stack.http_url}/admin/", cookies=jar, follow_redirects=False)
        assert admin.status_code == 302 and "/admin/login/" in admin.headers["location"]


def test_the_console_socket_refuses_foreign_origins(stack, site, django_user_model):
    agent = make_user(django_user_model, "sam")
    session_cookie(agent)
    code = run(_agent_socket_close_code(stack, session_cookie(agent), "https://evil.example"))
    assert code == 403
    host = urlsplit(stack.http_url).netloc
    assert run(_agent_socket_close_code(stack, session_cookie(agent), f"http://{host}")) is None
