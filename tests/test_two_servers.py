"""Two ASGI servers and two Celery workers on one Redis and one database.

Nothing a process keeps in memory is needed by another (docs/operations.md,
"Scaling out"): a reply produced by either worker reaches a visitor's sockets on
either server through the Redis channel layer, and a visitor who reconnects to the
other server resumes from `last_seq`.

Each worker runs with its own LLM_MODEL, which every reply stores (`Message.model`),
so the transcript says which worker produced each reply; the workers' logs must
agree.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from django.conf import settings

from conversations.models import Message
from tests import stack as stack_module
from tests.conftest import TEST_SERVER_SETTINGS
from tests.scripted_llm import Script, default_reply_tokens
from tests.visitor import Socket, Visitor, assembled, deltas_of, run

WORKER_MODELS = ("scripted-model-a", "scripted-model-b")
VISITORS_PER_SERVER = 3
MESSAGES_PER_VISITOR = 2
# One reply takes well under a second here; generous for four servers sharing a
# loaded CI machine's two cores.
REPLY_TIMEOUT = 30.0
# A late duplicate (a second `done`, a replayed delta) would arrive within this.
SETTLE_SECONDS = 1.5
DEFAULT_TEXT = "".join(default_reply_tokens(12))


@pytest.fixture(scope="module")
def two_by_two_processes(django_db_setup, django_db_blocker, llm_server):
    """Two ASGI servers and two workers on the session's Redis and database, on a
    queue of their own; started once for this module's tests."""
    with stack_module.log_dir() as logs:
        env = stack_module.server_env(
            database=settings.DATABASES["default"],
            redis_url=settings.REDIS_URL,
            llm_base_url=llm_server.base_url,
            **TEST_SERVER_SETTINGS,
        )
        children: list[stack_module.Child] = []
        try:
            workers = []
            for model in WORKER_MODELS:
                worker = stack_module.CeleryWorker(dict(env, LLM_MODEL=model), logs)
                worker.model = model
                children.append(worker)
                workers.append(worker)
            servers = []
            for _ in range(2):
                children.append(stack_module.AsgiServer(env, logs))
                servers.append(children[-1])
            yield servers, workers, children
        finally:
            for child in children:
                child.stop()


@pytest.fixture
def two_by_two(two_by_two_processes, transactional_db, request):
    servers, workers, children = two_by_two_processes
    yield servers, workers
    if stack_module.call_failed(request):
        for child in children:
            print(f"----- {child.name} log (alive: {child.alive()}) -----\n{child.log()[-6000:]}")


def _on(server: stack_module.AsgiServer, visitor: Visitor) -> Visitor:
    """The same visitor (same token) as seen through another server."""
    other = Visitor(server.url, server.ws_url, visitor.site_key)
    other.token = visitor.token
    return other


async def _drain(socket: Socket, seconds: float) -> None:
    """Read whatever else arrives for a while (late duplicates would show here)."""
    try:
        while True:
            await socket.recv(timeout=seconds)
    except TimeoutError:
        pass


def _completed_replies(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        e["message"]["id"]: e["message"]
        for e in events
        if e["type"] == "done" and e["message"]["role"] == "assistant"
    }


def _succeeded_replies(worker: stack_module.CeleryWorker) -> int:
    return len(re.findall(r"generate_reply\[[^]]+\] succeeded", worker.log()))


def test_visitors_on_either_server_get_replies_from_either_worker(two_by_two, llm, site, capsys):
    servers, workers = two_by_two
    # Each conversation has a tab open on each server: the one it talks through
    # (its "home") and another. Every reply must reach both, once.
    visitors = []
    for home in range(2):
        for _ in range(VISITORS_PER_SERVER):
            visitor = Visitor(servers[home].url, servers[home].ws_url, site.public_key)
            visitors.append((home, visitor, visitor.start()))

    async def converse(home: int, visitor: Visitor, conversation: dict[str, Any]):
        away = _on(servers[1 - home], visitor)
        async with visitor.socket(conversation) as talking, away.socket(conversation) as other:
            questions = []
            for n in range(MESSAGES_PER_VISITOR):
                client_id = await talking.say(f"Question {n} about my order")
                questions.append(client_id)
                _, done = await talking.reply(timeout=REPLY_TIMEOUT)
                await other.until(
                    lambda e, d=done: e["type"] == "done" and e["message"]["id"] == d["id"],
                    timeout=REPLY_TIMEOUT,
                )
            await asyncio.gather(_drain(talking, SETTLE_SECONDS), _drain(other, SETTLE_SECONDS))
            return home, conversation, questions, talking.events, other.events

    async def everyone():
        return await asyncio.gather(*(converse(*v) for v in visitors))

    logged_before = {worker.model: _succeeded_replies(worker) for worker in workers}
    started = time.monotonic()
    results = run(everyone())
    elapsed = time.monotonic() - started

    produced_by: dict[str, str] = {}
    delivered: set[tuple[int, str]] = set()
    for home, conversation, questions, talking, other in results:
        conversation_id = conversation["conversation"]["id"]
        stored = list(Message.objects.filter(conversation_id=conversation_id).order_by("seq"))
        asked = [m for m in stored if m.role == Message.Role.VISITOR]
        replies = [m for m in stored if m.role == Message.Role.ASSISTANT]
        assert [m.client_id for m in asked] == questions
        assert sorted(r.reply_to_id for r in replies) == [m.pk for m in asked], (
            "exactly one reply per message"
        )
        for server, events in ((home, talking), (1 - home, other)):
            # Exactly one start and one `done` per reply on each socket, the stored text.
            done = _completed_replies(events)
            assert sorted(done) == sorted(str(r.pk) for r in replies), (server, events)
            starts = [
                e["message"]["id"]
                for e in events
                if e["type"] == "message" and e["message"]["role"] == "assistant"
            ]
            assert sorted(starts) == sorted(done), "one start per reply"
            assert [e for e in events if e["type"] == "done"] == [
                {"type": "done", "message": message} for message in done.values()
            ], "no `done` twice"
            echoes = [
                e["message"]["client_id"]
                for e in events
                if e["type"] == "message" and e["message"]["role"] == "visitor"
            ]
            assert echoes == questions, "each visitor message echoed once, in order"
            for reply in replies:
                assert done[str(reply.pk)]["status"] == "complete"
                assert done[str(reply.pk)]["text"] == reply.text == DEFAULT_TEXT
                indexes = [d["index"] for d in deltas_of(events, str(reply.pk))]
                assert indexes == list(range(len(indexes))), "deltas once each, in order"
                assert assembled(events, str(reply.pk)) == reply.text
                delivered.add((server, reply.model))
        for reply in replies:
            produced_by[str(reply.pk)] = reply.model

    per_worker = {model: list(produced_by.values()).count(model) for model in WORKER_MODELS}
    logged = {
        worker.model: _succeeded_replies(worker) - logged_before[worker.model] for worker in workers
    }
    with capsys.disabled():
        print(
            f"\ntwo servers x two workers: {len(produced_by)} replies in {elapsed:.1f} s; "
            f"by worker {per_worker}; worker logs {logged}; "
            f"(server, worker) pairs delivered {sorted(delivered)}"
        )
    total = len(visitors) * MESSAGES_PER_VISITOR
    assert len(produced_by) == total
    # Both workers took replies, and their logs account for every one of them.
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert logged == per_worker, (logged, per_worker)
    # Every (server, worker) pair: each server delivered replies of both workers.
    assert delivered == {(server, model) for server in (0, 1) for model in WORKER_MODELS}


def test_a_visitor_who_reconnects_to_the_other_server_mid_reply_resumes(two_by_two, llm, site):
    servers, _ = two_by_two
    # 5 s of streaming: the reconnect (milliseconds) lands mid-reply with a wide margin.
    llm.enqueue(Script(reply_words=100, token_interval=0.05), match="slowly")
    visitor = Visitor(servers[0].url, servers[0].ws_url, site.public_key)
    conversation = visitor.start()
    elsewhere = _on(servers[1], visitor)

    async def scenario():
        async with visitor.socket(conversation) as first:
            await first.say("Hello there")
            await first.reply(timeout=REPLY_TIMEOUT)
            await first.say("Tell me slowly about delivery times")
            start = await first.until(
                lambda e: e["type"] == "message" and e["message"]["role"] == "assistant"
                and e["message"]["status"] == "streaming",
                timeout=REPLY_TIMEOUT,
            )  # fmt: skip
            reply_id = start[-1]["message"]["id"]
            await first.until(
                lambda e: e["type"] == "delta" and e["message_id"] == reply_id, REPLY_TIMEOUT
            )
            # What the widget keeps: the highest seq it saw.
            last_seq = max(
                e["message"]["seq"] for e in first.events if e["type"] in ("message", "done")
            )
        # The load balancer sends the reconnect to the other server.
        async with elsewhere.socket(conversation, last_seq=last_seq) as second:
            _, done = await second.reply(timeout=REPLY_TIMEOUT)
            await second.say("And on weekends?")
            _, after = await second.reply(timeout=REPLY_TIMEOUT)
            await _drain(second, SETTLE_SECONDS)
        return reply_id, last_seq, second.ready, second.events, done, after

    reply_id, last_seq, ready, events, done, after = run(scenario())
    stored = Message.objects.get(pk=reply_id)
    assert ready["last_seq"] >= last_seq
    # The resume: the reply still streaming, with the text so far (kept in Redis by
    # the worker, read by the other server), then only the deltas not in it, then `done`.
    resumed = [e for e in events if e["type"] == "message" and e["message"]["id"] == reply_id]
    assert len(resumed) == 1, resumed
    snapshot = resumed[0]["message"]
    assert snapshot["status"] == "streaming" and snapshot["text"], snapshot
    later = deltas_of(events, reply_id)
    first_index = snapshot["next_index"]
    assert [d["index"] for d in later] == list(range(first_index, first_index + len(later)))
    assert snapshot["text"] + assembled(events, reply_id) == stored.text
    assert done["id"] == reply_id and done["text"] == stored.text
    assert stored.status == "complete" and stored.text == "".join(default_reply_tokens(100))
    assert [e["message"]["id"] for e in events if e["type"] == "done"] == [reply_id, after["id"]]
    # Nothing earlier comes again: everything replayed is newer than last_seq, except
    # the reply that was still streaming.
    replayed = [
        e["message"] for e in events if e["type"] == "message" and e["message"]["id"] != reply_id
    ]
    assert all(m["seq"] > last_seq for m in replayed), replayed
    assert after["status"] == "complete" and after["text"] == DEFAULT_TEXT

    # A fresh hello on the other server replays the whole conversation as stored.
    async def replay():
        async with elsewhere.socket(conversation) as socket:
            messages = []
            while not messages or messages[-1]["seq"] < socket.ready["last_seq"]:
                event = await socket.recv()
                if event["type"] == "message":
                    messages.append(event["message"])
            return messages

    messages = run(replay())
    stored_rows = list(
        Message.objects.filter(conversation_id=conversation["conversation"]["id"]).order_by("seq")
    )
    assert [(m["id"], m["text"], m["status"]) for m in messages] == [
        (str(r.pk), r.text, r.status) for r in stored_rows
    ]
    assert [r.role for r in stored_rows] == ["visitor", "assistant"] * 3
