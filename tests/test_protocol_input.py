"""Hostile and malformed websocket input (docs/protocol.md, "WebSocket" and "Limits").

Before a good hello the server closes with 4401; after it, every bad frame gets an
error event with the protocol's code, the socket stays open, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import websockets

from conversations.models import Conversation, Message
from tests.protocol_helpers import (
    FOREIGN_ORIGIN,
    away_from_window_edge,
    events_before_pong,
    handshake_status,
    is_assistant_done,
    is_visitor_message,
    stored_seqs,
)
from tests.scripted_llm import Script
from tests.stack import AsgiServer
from tests.visitor import ORIGIN, Socket, Visitor, run

CLOSE_UNAUTHORIZED = 4401


def _nothing_stored(conversation_id: str) -> None:
    assert not Message.objects.filter(conversation_id=conversation_id).exists()
    assert Conversation.objects.get(pk=conversation_id).seq == 0


# --- Before hello ---------------------------------------------------------------------


async def _first_frame_closes(visitor: Visitor, conversation: dict, frame) -> int | None:
    async with visitor.socket(conversation, hello=False) as socket:
        await socket.send(frame)
        return await socket.closed_code()


def test_it_closes_with_4401_when_the_first_frame_is_not_a_good_hello(visitor):
    conversation = visitor.start()
    token = visitor.token
    first_frames = {
        "ping": {"type": "ping"},
        "message": {"type": "message", "text": "hi", "client_id": "c1"},
        "handoff": {"type": "handoff"},
        "not-json": "not json",
        "json-array": "[]",
        "no-type": {"token": token},
        "hello-without-token": {"type": "hello"},
        "hello-negative-last-seq": {"type": "hello", "token": token, "last_seq": -1},
        "hello-string-last-seq": {"type": "hello", "token": token, "last_seq": "3"},
        "binary-hello": json.dumps({"type": "hello", "token": token}).encode(),
        "oversized-hello": {"type": "hello", "token": token, "pad": "x" * 70_000},
    }

    async def scenario():
        return {
            name: await _first_frame_closes(visitor, conversation, frame)
            for name, frame in first_frames.items()
        }

    assert run(scenario()) == dict.fromkeys(first_frames, CLOSE_UNAUTHORIZED)
    _nothing_stored(conversation["conversation"]["id"])


def test_it_closes_with_4401_for_a_bad_token(visitor):
    conversation = visitor.start()
    token = visitor.token
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    tokens = {
        "garbage": "not-a-token",
        "empty": "",
        "not-a-string": 42,
        "null": None,
        "tampered": tampered,
        "unsigned": token.rsplit(":", 1)[0],
        "lone-surrogate": "\ud800",
        "token-plus-surrogate": token + "\ud800",
        "nul": "a\u0000b",
        "huge": "t" * 60_000,
    }

    async def scenario():
        return {
            name: await _first_frame_closes(
                visitor, conversation, {"type": "hello", "token": bad, "last_seq": 0}
            )
            for name, bad in tokens.items()
        }

    assert run(scenario()) == dict.fromkeys(tokens, CLOSE_UNAUTHORIZED)
    _nothing_stored(conversation["conversation"]["id"])


def test_it_closes_with_4401_for_a_token_of_another_conversation(stack, site, visitor):
    conversation = visitor.start()
    other = Visitor(stack.http_url, stack.ws_url, site.public_key)
    other.start()
    unknown = {"websocket_url": f"/ws/v1/conversations/{uuid.uuid4()}/"}

    async def scenario():
        hello = {"type": "hello", "last_seq": 0}
        return (
            await _first_frame_closes(visitor, conversation, {**hello, "token": other.token}),
            await _first_frame_closes(visitor, unknown, {**hello, "token": visitor.token}),
        )

    other_token_code, unknown_conversation_code = run(scenario())
    assert other_token_code == CLOSE_UNAUTHORIZED
    # The protocol allows 4404 for an unknown conversation seen through a valid token.
    assert unknown_conversation_code in (CLOSE_UNAUTHORIZED, 4404)
    _nothing_stored(conversation["conversation"]["id"])


def test_it_closes_with_4401_when_no_hello_arrives_in_time(stack, visitor):
    conversation = visitor.start()
    server = AsgiServer(dict(stack.env, WS_HELLO_TIMEOUT="1"), stack.log_dir)
    try:

        async def scenario():
            url = server.ws_url + conversation["websocket_url"]
            async with Socket(url, token=visitor.token, origin=ORIGIN, hello=False) as socket:
                started = time.monotonic()
                code = await socket.closed_code(timeout=15)
                return code, time.monotonic() - started

        code, waited = run(scenario())
    finally:
        server.stop()

    assert code == CLOSE_UNAUTHORIZED
    assert waited >= 0.9
    _nothing_stored(conversation["conversation"]["id"])


def test_it_refuses_a_foreign_or_missing_origin_at_connect(stack, visitor):
    conversation = visitor.start()
    url = stack.ws_url + conversation["websocket_url"]

    async def scenario():
        return {
            "foreign": await handshake_status(url, FOREIGN_ORIGIN),
            "lookalike": await handshake_status(url, ORIGIN + ".evil.net"),
            "other-scheme": await handshake_status(url, ORIGIN.replace("https:", "http:")),
            # The servers run with DEBUG=0, where a missing Origin is refused.
            "missing": await handshake_status(url, None),
            "allowed": await handshake_status(url, ORIGIN),
        }

    assert run(scenario()) == {
        "foreign": 403,
        "lookalike": 403,
        "other-scheme": 403,
        "missing": 403,
        "allowed": None,
    }
    _nothing_stored(conversation["conversation"]["id"])


# --- After hello: bad frames ------------------------------------------------------------


def _message(text, client_id="c-1") -> dict:
    return {"type": "message", "text": text, "client_id": client_id}


BAD_FRAMES = [
    ("not-json", "not json", "bad_request"),
    ("json-array", "[1, 2]", "bad_request"),
    ("json-string", '"message"', "bad_request"),
    ("json-null", "null", "bad_request"),
    ("unknown-type", {"type": "shout"}, "bad_request"),
    ("non-string-type", {"type": 5}, "bad_request"),
    ("no-type", {"text": "hi"}, "bad_request"),
    ("binary", b'{"type": "ping"}', "bad_request"),
    ("missing-text", {"type": "message", "client_id": "c-1"}, "bad_request"),
    ("numeric-text", _message(42), "bad_request"),
    ("list-text", _message(["hi"]), "bad_request"),
    ("null-text", _message(None), "bad_request"),
    ("empty-text", _message(""), "bad_request"),
    ("whitespace-text", _message(" \n\t\u3000 "), "bad_request"),
    ("4001-chars", _message("x" * 4001), "too_long"),
    ("4001-chars-after-trimming", _message(" " + "x" * 4001 + " "), "too_long"),
    ("frame-over-64k", _message("x" * 70_000), "too_long"),
    # Over 64 KiB of UTF-8 in fewer than 64 Ki characters.
    (
        "frame-over-64k-bytes",
        json.dumps({"type": "ping", "pad": "\u00e9" * 40_000}, ensure_ascii=False),
        "too_long",
    ),
    ("100k-brackets", "[" * 100_000, "too_long"),
    ("deeply-nested-array", "[" * 30_000 + "]" * 30_000, "bad_request"),
    (
        "deeply-nested-field",
        '{"type": "ping", "x": ' + "[" * 30_000 + "]" * 30_000 + "}",
        "bad_request",
    ),
    ("lone-surrogate", _message("\ud800"), "bad_request"),
    ("surrogate-inside", _message("a\udfffb"), "bad_request"),
    ("nul", _message("a\u0000b"), "bad_request"),
    ("numeric-client-id", _message("hi", 7), "bad_request"),
    ("empty-client-id", _message("hi", ""), "bad_request"),
    ("101-char-client-id", _message("hi", "c" * 101), "bad_request"),
    ("surrogate-client-id", _message("hi", "\ud800"), "bad_request"),
    ("nul-client-id", _message("hi", "a\u0000"), "bad_request"),
    ("second-hello", {"type": "hello", "token": "x", "last_seq": 0}, "bad_request"),
]


def test_it_answers_each_bad_frame_with_its_error_code_and_stays_open(visitor, llm):
    conversation = visitor.start()

    async def scenario():
        outcomes = {}
        socket = None
        try:
            for name, frame, _ in BAD_FRAMES:
                if socket is None:
                    socket = await visitor.socket(conversation).__aenter__()
                try:
                    await socket.send(frame)
                    error = await socket.recv()
                    # The socket still works: a ping gets its pong and nothing else arrives.
                    between = await events_before_pong(socket)
                except websockets.ConnectionClosed as closed:
                    outcomes[name] = f"closed {closed.rcvd.code if closed.rcvd else None}"
                    socket = None
                    continue
                has_detail = isinstance(error.get("detail"), str) and bool(error["detail"])
                if error["type"] == "error" and has_detail and between == []:
                    outcomes[name] = error["code"]
                else:
                    outcomes[name] = (error, between)
        finally:
            if socket is not None:
                await socket.__aexit__(None, None, None)
        return outcomes

    outcomes = run(scenario())
    assert outcomes == {name: code for name, _, code in BAD_FRAMES}
    _nothing_stored(conversation["conversation"]["id"])
    assert llm.requests == []


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        pytest.param("x" * 4000, "x" * 4000, id="exactly-4000"),
        pytest.param("  " + "y" * 4000 + "\n ", "y" * 4000, id="4000-after-trimming"),
    ],
)
def test_it_accepts_a_message_of_exactly_the_limit(visitor, llm, sent, stored):
    llm.enqueue(Script(tokens=["ok"]))
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            client_id = await socket.say(sent)
            events, done = await socket.reply()
            return client_id, events, done

    client_id, events, done = run(scenario())
    assert [e for e in events if e["type"] == "error"] == []
    echo = next(e["message"] for e in events if is_visitor_message(e))
    assert echo["text"] == stored and echo["client_id"] == client_id and echo["seq"] == 1
    row = Message.objects.get(conversation_id=conversation["conversation"]["id"], seq=1)
    assert row.text == stored and row.client_id == client_id
    assert done["text"] == "ok" and done["seq"] == 2


# --- Duplicate client_id ------------------------------------------------------------------


def test_it_stores_and_answers_a_repeated_client_id_once(visitor, llm):
    llm.enqueue(Script(tokens=["Only", " once"]), match="the question")
    llm.enqueue(Script(tokens=["Next"]), match="a later question")
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with visitor.socket(conversation) as socket:
            client_id = await socket.say("the question")
            first, _ = await socket.reply()
            await socket.say("the question", client_id=client_id)
            again = await socket.until(lambda e: e["type"] == "message")
            again = [e for e in again if e["type"] != "typing"]
            # Waiting for a later message's reply gives a wrong second reply time to show.
            await socket.say("a later question")
            later, _ = await socket.reply()
            return client_id, first, again, later

    client_id, first, again, later = run(scenario())
    echo = next(e["message"] for e in first if is_visitor_message(e))
    assert again == [{"type": "message", "message": echo}]
    assert [e for e in later if e["type"] == "error"] == []
    visitor_rows = Message.objects.filter(conversation_id=conversation_id, role="visitor")
    assert [(m.text, m.seq) for m in visitor_rows.order_by("seq")] == [
        ("the question", 1),
        ("a later question", 3),
    ]
    assert visitor_rows.filter(client_id=client_id).count() == 1
    replies = Message.objects.filter(conversation_id=conversation_id, role="assistant")
    assert [(r.text, r.reply_to.text) for r in replies.order_by("seq")] == [
        ("Only once", "the question"),
        ("Next", "a later question"),
    ]
    asked = [r["json"]["messages"][-1]["content"] for r in llm.requests]
    assert asked == ["the question", "a later question"]
    assert stored_seqs(conversation_id) == [1, 2, 3, 4]


def test_it_stores_one_message_when_two_sockets_send_the_same_client_id_at_once(visitor, llm):
    llm.enqueue(Script(tokens=["One", " reply"]), match="racing question")
    llm.enqueue(Script(tokens=["Next"]), match="a later question")
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    client_id = str(uuid.uuid4())
    frame = {"type": "message", "text": "racing question", "client_id": client_id}

    async def scenario():
        async with visitor.socket(conversation) as one, visitor.socket(conversation) as two:
            await asyncio.gather(one.send(frame), two.send(frame))
            seen = await asyncio.gather(one.reply(), two.reply())
            # Both sockets hear the reply; the loser also got the stored message back,
            # possibly after the reply ended, so let a ping flush each socket.
            flushed = await asyncio.gather(events_before_pong(one), events_before_pong(two))
            await one.say("a later question")
            await one.reply()
            return [events + more for (events, _), more in zip(seen, flushed, strict=True)]

    per_socket = run(scenario())
    echoes = [[e["message"] for e in events if is_visitor_message(e)] for events in per_socket]
    assert sorted(len(e) for e in echoes) == [1, 2]
    stored = Message.objects.get(conversation_id=conversation_id, client_id=client_id)
    assert {m["id"] for e in echoes for m in e} == {str(stored.pk)}
    assert all(m["client_id"] == client_id and m["seq"] == 1 for e in echoes for m in e)
    dones = [[e["message"]["id"] for e in events if is_assistant_done(e)] for events in per_socket]
    assert dones[0] == dones[1] and len(dones[0]) == 1
    replies = Message.objects.filter(conversation_id=conversation_id, role="assistant")
    assert [(r.text, r.reply_to_id) for r in replies.order_by("seq")][0] == (
        "One reply",
        stored.pk,
    )
    assert replies.count() == 2
    asked = [r["json"]["messages"][-1]["content"] for r in llm.requests]
    assert asked == ["racing question", "a later question"]
    assert stored_seqs(conversation_id) == [1, 2, 3, 4]


# --- Flood ---------------------------------------------------------------------------------


def test_it_rate_limits_a_flood_without_losing_accepted_messages(visitor, llm):
    for _ in range(20):
        llm.enqueue(Script(tokens=["ok"]))
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    client_ids = [f"flood-{i}" for i in range(25)]
    # The per-visitor limit counts in fixed one-minute windows: keep the burst in one.
    away_from_window_edge(60, margin=10)

    async def scenario():
        async with visitor.socket(conversation) as socket:
            for i, client_id in enumerate(client_ids):
                await socket.send(
                    {"type": "message", "text": f"message {i}", "client_id": client_id}
                )
            events: list[dict] = []
            while sum(map(is_assistant_done, events)) < 20 or (
                sum(e["type"] == "error" for e in events) < 5
            ):
                events.append(await socket.recv(timeout=30))
            events += await events_before_pong(socket)
            return events

    events = run(scenario())
    echoes = [e["message"]["client_id"] for e in events if is_visitor_message(e)]
    assert sorted(echoes) == sorted(client_ids[:20])  # each accepted one echoed once
    assert echoes == client_ids[:20]  # in the order sent
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["rate_limited"] * 5
    for error in errors:
        assert isinstance(error["retry_after"], int) and not isinstance(error["retry_after"], bool)
        assert 0 < error["retry_after"] <= 60
    assert sum(map(is_assistant_done, events)) == 20

    rows = Message.objects.filter(conversation_id=conversation_id, role="visitor")
    assert sorted(rows.values_list("client_id", flat=True)) == sorted(client_ids[:20])
    assert (
        Message.objects.filter(
            conversation_id=conversation_id, role="assistant", status="complete"
        ).count()
        == 20
    )
    assert stored_seqs(conversation_id) == list(range(1, 41))
    assert len(llm.requests) == 20


def test_it_stores_and_echoes_non_ascii_text_unchanged(visitor, llm):
    llm.enqueue(Script(tokens=["ok"]))
    conversation = visitor.start()
    text = 'emoji \U0001f600, right-to-left \u05e9\u05dc\u05d5\u05dd, <b>tags</b> & "quotes"'

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say(text)
            return await socket.reply()

    events, _ = run(scenario())
    echo = next(e["message"] for e in events if is_visitor_message(e))
    assert echo["text"] == text
    row = Message.objects.get(pk=echo["id"])
    assert row.text == text
    assert json.loads(json.dumps(echo)) == echo
