"""PostgreSQL restarted under a live stack: no process stays broken, requests during
the outage fail with a clear error (never a hang), and a reply that streamed during
the outage is reconciled once the database is back.

Each test runs a PostgreSQL server of its own (stopped with the fast shutdown an
orchestrator's restart uses, and started again on the same port) and its own ASGI
server and Celery worker pointed at it, so the rest of the suite's database is never
touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import psycopg
import pytest
import websockets
from django.conf import settings

from conversations.health import PROBE_TIMEOUT
from conversations.models import Message
from supportbot.postgresql.base import NOTICE_SECONDS, PROBE_WAIT_SECONDS, RECONNECT_SECONDS
from tests import embedded
from tests import stack as stack_module
from tests.conftest import TEST_SERVER_SETTINGS
from tests.scripted_llm import Script
from tests.visitor import ORIGIN, Visitor, assembled, run

# The servers' database settings for these tests (docs/operations.md).
DB_SETTINGS = {"DB_CONNECT_TIMEOUT": "3", "DB_RETRY_SECONDS": "60"}
# A request during the outage is answered (with an error) within: the slice in which
# a request waiting on the pool notices an outage, one wait for the pool to
# reconnect, one connection attempt (connect timeout), plus a margin for a loaded
# machine. Before the fix a request waited out the pool timeout (30 s), then got a
# 500 page.
ERROR_BOUND_SECONDS = (
    NOTICE_SECONDS + PROBE_WAIT_SECONDS + float(DB_SETTINGS["DB_CONNECT_TIMEOUT"]) + 4
)
# Once PostgreSQL accepts connections again, every process works again within the
# longest series of reconnection attempts (a fresh one starts after it) and one
# wait for it, plus a margin.
RECOVERY_BOUND_SECONDS = RECONNECT_SECONDS + PROBE_WAIT_SECONDS + 10
# A reply left to the sweep is failed within two sweeps of the database's return
# (docs/reliability.md, "Worker loss"), plus the recovery above.
SWEEP_BOUND_SECONDS = 2 * 5 + RECOVERY_BOUND_SECONDS
# How long the database stays down after the reply has finished streaming: long
# enough that the worker's first attempts to store it fail.
OUTAGE_AFTER_REPLY_SECONDS = 6
REPLY_WORDS = 60

CREATE_SITE = """
from conversations.models import Site
site = Site.objects.create(
    name="Restart shop", allowed_origins=[{origin!r}], temperature=0.2, max_tokens=300,
    system_prompt="You are the Restart shop's support assistant.",
    moderation_mode=Site.ModerationMode.AFTER,
    moderation_provider=Site.ModerationProvider.OFFLINE,
)
print(site.public_key)
"""


@pytest.fixture
def restartable(llm_server, request):
    """(PostgreSQL server, ASGI server, worker, site key), all of this test's own;
    `request.param` adds server settings."""
    overrides = getattr(request, "param", {})
    with embedded.private_postgres() as postgres, stack_module.log_dir() as logs:
        env = stack_module.server_env(
            database={
                "NAME": "supportbot",
                "USER": "postgres",
                "HOST": "127.0.0.1",
                "PORT": postgres.port,
            },
            redis_url=settings.REDIS_URL,
            llm_base_url=llm_server.base_url,
            **{**TEST_SERVER_SETTINGS, **DB_SETTINGS, **overrides},
        )
        stack_module.manage(env, "migrate", "--noinput")
        output = stack_module.manage(env, "shell", "-c", CREATE_SITE.format(origin=ORIGIN))
        children: list[stack_module.Child] = []
        try:
            children.append(stack_module.CeleryWorker(env, logs))
            children.append(stack_module.AsgiServer(env, logs))
            # The shell may print a banner first; the key is the last line.
            yield postgres, children[1], children[0], output.split()[-1]
        finally:
            stack_module.stop_all(children, request, log_tail=8000)
            if stack_module.call_failed(request):
                print(f"----- postgres log -----\n{postgres.log_path.read_text()[-3000:]}")


def _rows(postgres, sql: str, params: list) -> list[tuple]:
    with psycopg.connect(postgres.url, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def _stored_reply(postgres, reply_id: str) -> tuple[str, str, str]:
    """(status, text, error_code) of a stored reply."""
    [row] = _rows(
        postgres,
        f"SELECT status, text, error_code FROM {Message._meta.db_table} WHERE id = %s",  # noqa: S608
        [int(reply_id)],
    )
    return row


async def _timed(what: str, coro, bound: float):
    """Await coro; its result and how long it took. Fails well past the bound (a hang)."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(coro, bound + 30)
    except TimeoutError:
        pytest.fail(f"{what} hung: no answer within {bound + 30:.0f} s")
    return result, time.monotonic() - started


def _is_unavailable_json(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("content-type", "").startswith("application/json")
        and response.json()["error"]["code"] == "unavailable"
    )


async def _hello_close_code(asgi, conversation: dict, token: str) -> int | None:
    """Open a new socket and say hello; the close code the server ends it with."""
    try:
        async with websockets.connect(
            asgi.ws_url + conversation["websocket_url"], origin=ORIGIN, open_timeout=60
        ) as ws:
            await ws.send(f'{{"type": "hello", "token": "{token}", "last_seq": 0}}')
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


def _reply_id(events: list[dict]) -> str:
    return next(
        e["message"]["id"]
        for e in events
        if e["type"] == "message" and e["message"]["role"] == "assistant"
    )


def _print_timings(capsys, title: str, timings: dict[str, float]) -> None:
    with capsys.disabled():
        print(f"\n{title}:", ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))


def test_postgres_restarted_mid_reply_fails_requests_clearly_and_every_process_recovers(
    restartable, llm, capsys
):
    postgres, asgi, worker, site_key = restartable
    pids = (asgi.process.pid, worker.process.pid)
    visitor = Visitor(asgi.url, asgi.ws_url, site_key)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    llm.enqueue(Script(reply_words=REPLY_WORDS, token_interval=0.05))
    timings: dict[str, float] = {}

    async def during_outage(socket, http: httpx.AsyncClient) -> None:
        # The socket stays useful: a ping needs no database.
        await socket.send({"type": "ping"})
        _, timings["ping"] = await _timed(
            "ping", socket.until(lambda e: e["type"] == "pong", timeout=60), 1
        )
        # A message cannot be stored: the sender is told so, on an open socket.
        await socket.say("Are you still there?", client_id="outage-1")
        seen, timings["ws message"] = await _timed(
            "a websocket message",
            socket.until(lambda e: e["type"] == "error" and e.get("client_id") == "outage-1", 60),
            ERROR_BOUND_SECONDS,
        )
        assert seen[-1]["code"] == "unavailable", seen[-1]
        response, timings["POST conversations"] = await _timed(
            "POST /api/v1/conversations",
            http.post(f"{asgi.url}/api/v1/conversations", json={"site_key": site_key}),
            ERROR_BOUND_SECONDS,
        )
        assert _is_unavailable_json(response), (response.status_code, response.text[:300])
        assert response.headers["Retry-After"].isdigit()
        response, timings["GET messages"] = await _timed(
            "GET messages",
            http.get(
                f"{asgi.url}/api/v1/conversations/{conversation_id}/messages",
                headers={"Authorization": f"Bearer {visitor.token}"},
            ),
            ERROR_BOUND_SECONDS,
        )
        assert _is_unavailable_json(response), (response.status_code, response.text[:300])
        # A new socket cannot be let in without the database: it is closed with
        # "try again later" (1013), not refused with a 500 or left waiting.
        code, timings["new socket"] = await _timed(
            "a new websocket",
            _hello_close_code(asgi, conversation, visitor.token),
            ERROR_BOUND_SECONDS,
        )
        assert code == 1013, code
        response, timings["healthz"] = await _timed(
            "/healthz", http.get(f"{asgi.url}/healthz"), ERROR_BOUND_SECONDS + PROBE_TIMEOUT
        )
        assert response.status_code == 503, response.text
        assert not response.json()["checks"]["database"]["ok"]
        for what in ("ws message", "POST conversations", "GET messages", "new socket"):
            assert timings[what] <= ERROR_BOUND_SECONDS, (what, timings)
        assert timings["healthz"] <= ERROR_BOUND_SECONDS + PROBE_TIMEOUT, timings

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("Tell me all about returns", client_id="before-1")
            await socket.until(lambda e: e["type"] == "delta")
            await asyncio.to_thread(postgres.stop)
            stopped_at = time.monotonic()
            async with httpx.AsyncClient(timeout=60, headers={"Origin": ORIGIN}) as http:
                await during_outage(socket, http)
            reply_id = _reply_id(socket.events)
            # The reply streams to its end while the database is away.
            await socket.until(
                lambda e: f"w{REPLY_WORDS - 1}" in assembled(socket.events, reply_id), 60
            )
            await asyncio.sleep(OUTAGE_AFTER_REPLY_SECONDS)
            # From this thread, not a worker thread: the server dies with the thread
            # that started it (PR_SET_PDEATHSIG), and asyncio's threads end with the loop.
            postgres.start()
            started_at = time.monotonic()
            timings["outage"] = started_at - stopped_at
            await socket.until(
                lambda e: e["type"] == "done" and e["message"]["id"] == reply_id,
                RECOVERY_BOUND_SECONDS + 30,
            )
            timings["reply reconciled"] = time.monotonic() - started_at
            # The same socket works again: the message refused during the outage is
            # sent again (same client_id) and answered.
            await socket.say("Are you still there?", client_id="outage-1")
            await socket.reply(timeout=RECOVERY_BOUND_SECONDS + 30)
            timings["same socket answered"] = time.monotonic() - started_at
            return socket.events, reply_id, started_at

    try:
        events, reply_id, started_at = run(scenario())
        # New conversations, sockets and replies work, with no process restarted.
        fresh = Visitor(asgi.url, asgi.ws_url, site_key)
        fresh_conversation = fresh.start()

        async def fresh_chat():
            async with fresh.socket(fresh_conversation) as socket:
                await socket.say("Hello again")
                return await socket.reply(timeout=RECOVERY_BOUND_SECONDS)

        _, fresh_done = run(fresh_chat())
        timings["new conversation answered"] = time.monotonic() - started_at
    finally:
        _print_timings(capsys, "PostgreSQL restart", timings)

    assert fresh_done["status"] == "complete"
    assert asgi.alive() and worker.alive()
    assert (asgi.process.pid, worker.process.pid) == pids, "no process was restarted"
    for what in ("reply reconciled", "same socket answered", "new conversation answered"):
        assert timings[what] <= RECOVERY_BOUND_SECONDS, (what, timings)

    # The reply that streamed during the outage was stored whole once the database
    # was back (the outage was shorter than DB_RETRY_SECONDS): one `done`, no
    # failure, and the stored transcript is what the visitor saw.
    dones = [e for e in events if e["type"] == "done" and e["message"]["id"] == reply_id]
    assert len(dones) == 1, dones
    assert dones[0]["message"]["status"] == "complete"
    assert not [e for e in events if e["type"] == "error" and e.get("message_id") == reply_id]
    status, text, _ = _stored_reply(postgres, reply_id)
    assert status == "complete"
    assert text == dones[0]["message"]["text"] == assembled(events, reply_id)
    assert text.endswith(f"w{REPLY_WORDS - 1}")
    # Nothing was stored twice: one copy of each visitor message, one reply each.
    conversation_uuid = uuid.UUID(conversation_id)
    visitor_rows = _rows(
        postgres,
        f"SELECT client_id, count(*) FROM {Message._meta.db_table} "  # noqa: S608
        "WHERE conversation_id = %s AND role = 'visitor' GROUP BY client_id ORDER BY client_id",
        [conversation_uuid],
    )
    assert visitor_rows == [("before-1", 1), ("outage-1", 1)]
    [(replies,)] = _rows(
        postgres,
        f"SELECT count(*) FROM {Message._meta.db_table} "  # noqa: S608
        "WHERE conversation_id = %s AND role = 'assistant'",
        [conversation_uuid],
    )
    assert replies == 2


@pytest.mark.parametrize("restartable", [{"DB_RETRY_SECONDS": "0"}], indirect=True)
def test_a_reply_that_could_not_be_stored_is_failed_once_postgres_is_back(restartable, llm, capsys):
    """The outage outlasts the worker's retries (none here): the reply is left to the
    sweep, which fails it with the text the visitor saw once the database is back."""
    postgres, asgi, worker, site_key = restartable
    visitor = Visitor(asgi.url, asgi.ws_url, site_key)
    conversation = visitor.start()
    llm.enqueue(Script(reply_words=40, token_interval=0.05))
    timings: dict[str, float] = {}

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("Tell me all about shipping")
            await socket.until(lambda e: e["type"] == "delta")
            await asyncio.to_thread(postgres.stop)
            reply_id = _reply_id(socket.events)
            await socket.until(lambda e: "w39" in assembled(socket.events, reply_id), 30)
            # The worker gives up storing it before the database returns.
            deadline = time.monotonic() + 30
            while "could not be stored; the sweep will end it" not in worker.log():
                assert time.monotonic() < deadline, "the worker never gave up storing"
                await asyncio.sleep(0.2)
            postgres.start()  # from this thread: see the test above
            started_at = time.monotonic()
            await socket.until(
                lambda e: e["type"] == "error" and e.get("message_id") == reply_id,
                SWEEP_BOUND_SECONDS + 30,
            )
            timings["reply_failed after restart"] = time.monotonic() - started_at
            # Nothing else follows: no second outcome.
            try:
                while True:
                    await socket.recv(timeout=3)
            except TimeoutError:
                pass
            return socket.events, reply_id

    try:
        events, reply_id = run(scenario())
    finally:
        _print_timings(capsys, "PostgreSQL restart, reply left to the sweep", timings)
    assert timings["reply_failed after restart"] <= SWEEP_BOUND_SECONDS, timings
    dones = [e for e in events if e["type"] == "done" and e["message"]["id"] == reply_id]
    failures = [e for e in events if e["type"] == "error" and e.get("message_id") == reply_id]
    assert len(dones) == 1 and dones[0]["message"]["status"] == "failed", dones
    assert [e["code"] for e in failures] == ["reply_failed"]
    status, text, error_code = _stored_reply(postgres, reply_id)
    assert (status, error_code) == ("failed", "worker_lost")
    assert text == dones[0]["message"]["text"] == assembled(events, reply_id)
    assert text.endswith("w39"), "the text streamed during the outage is kept"
