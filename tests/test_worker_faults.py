"""A worker killed outright: its visitors still get exactly one outcome, quickly.

These tests run their own ASGI server and workers on a queue of their own, so
killing a worker does not disturb the session's stack.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from django.conf import settings

from conversations import services
from conversations.models import Message
from tests import stack as stack_module
from tests.conftest import TEST_SERVER_SETTINGS
from tests.scripted_llm import Script
from tests.visitor import Visitor, assembled, run

# The documented bound (docs/reliability.md): lease 10 s + two 5 s sweeps, plus
# the time a fresh worker takes to start.
RECOVERY_BOUND_SECONDS = 30


@pytest.fixture
def own_stack(stack, llm_server, transactional_db, request):
    with stack_module.log_dir() as logs:
        env = stack_module.server_env(
            database=settings.DATABASES["default"],
            redis_url=settings.REDIS_URL,
            llm_base_url=llm_server.base_url,
            **{**TEST_SERVER_SETTINGS, "REQUEUE_UNANSWERED_SECONDS": "5"},
        )
        children: list[stack_module.Child] = []
        asgi = stack_module.AsgiServer(env, logs)
        asgi.env = env
        children.append(asgi)

        def worker() -> stack_module.CeleryWorker:
            children.append(stack_module.CeleryWorker(env, logs))
            return children[-1]

        try:
            yield asgi, worker, children
        finally:
            stack_module.stop_all(children, request, log_tail=5000)


def test_a_worker_killed_mid_reply_ends_in_one_reply_failed_within_the_bound(
    own_stack, llm, site, capsys
):
    asgi, start_worker, _ = own_stack
    first = start_worker()
    llm.enqueue(Script(reply_words=200, token_interval=0.1))
    visitor = Visitor(asgi.url, asgi.ws_url, site.public_key)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("Tell me everything about your return policy")
            await socket.until(lambda e: e["type"] == "delta")
            await asyncio.sleep(0.5)
            killed_at = time.monotonic()
            first.kill()
            await asyncio.to_thread(start_worker)
            events = await socket.until(
                lambda e: e["type"] == "error" and e["code"] == "reply_failed", timeout=60
            )
            recovered_after = time.monotonic() - killed_at
            # Nothing else follows: no second reply, no late deltas.
            try:
                while True:
                    events.append(await socket.recv(timeout=3))
            except TimeoutError:
                pass
            return socket.events, recovered_after

    events, recovered_after = run(scenario())
    with capsys.disabled():
        print(f"\nSIGKILL mid-reply: reply_failed {recovered_after:.1f} s after the kill")
    assert recovered_after <= RECOVERY_BOUND_SECONDS, recovered_after
    starts = [e for e in events if e["type"] == "message" and e["message"]["role"] == "assistant"]
    dones = [e for e in events if e["type"] == "done"]
    assert len(starts) == 1 and len(dones) == 1, "exactly one reply, ended once"
    reply_id = starts[0]["message"]["id"]
    done = dones[0]["message"]
    assert done["status"] == "failed"
    stored = Message.objects.get(pk=reply_id)
    assert stored.status == "failed" and stored.error_code == "worker_lost"
    # The transcript agrees with what the visitor saw.
    assert stored.text == done["text"] == assembled(events, reply_id)
    assert stored.text, "the text streamed before the kill is kept"
    assert (
        Message.objects.filter(conversation_id=stored.conversation_id, role="assistant").count()
        == 1
    )


def test_a_message_whose_task_died_unprocessed_is_answered_by_another_worker(
    own_stack, llm, site, monkeypatch
):
    asgi, start_worker, _ = own_stack
    start_worker()
    visitor = Visitor(asgi.url, asgi.ws_url, site.public_key)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    # Stored and acknowledged, but its task is lost (as with a worker killed while
    # holding it): nothing is queued.
    monkeypatch.setattr(services, "_queue_reply", lambda message_id: True)
    stored = services.message_create_from_visitor(
        conversation_id=conversation_id, text="Do you ship to Norway?", client_id="lost-1"
    )
    monkeypatch.undo()

    deadline = time.monotonic() + 30
    reply = None
    while time.monotonic() < deadline and reply is None:
        reply = Message.objects.filter(reply_to=stored.message, status="complete").first()
        time.sleep(0.2)
    assert reply is not None, "the sweep queued the task again and it was answered"
    assert Message.objects.filter(conversation_id=conversation_id, role="assistant").count() == 1


def _health(asgi) -> tuple[int, dict]:
    response = httpx.get(asgi.url + "/healthz", timeout=15)
    return response.status_code, response.json()


def test_healthz_reports_a_worker_that_stopped_consuming(own_stack):
    from supportbot.celery import app

    asgi, start_worker, _ = own_stack
    worker = start_worker()
    queue = worker_queue(asgi)
    status, body = _health(asgi)
    assert status == 200 and body["checks"]["worker"]["ok"], body
    # What a worker looks like after Celery-on-Redis loses its consumer: alive,
    # answering pings, taking no tasks.
    node = [worker.hostname.replace("%h", socket.gethostname())]
    app.control.cancel_consumer(queue, destination=node, reply=True, timeout=5)
    assert app.control.ping(destination=node, timeout=2), "the worker still answers pings"
    status, body = _health(asgi)
    assert status == 503 and body["checks"]["worker"] == {
        "ok": False,
        "error": "WorkerNotConsuming",
        "ms": body["checks"]["worker"]["ms"],
    }
    app.control.add_consumer(queue, destination=node, reply=True, timeout=5)
    deadline = time.monotonic() + 15
    while _health(asgi)[0] != 200:
        assert time.monotonic() < deadline, "healthy again once it consumes"
        time.sleep(0.5)
    worker.kill()
    assert _health(asgi)[0] == 503


def worker_queue(asgi) -> str:
    return asgi.env["CELERY_QUEUE"]
