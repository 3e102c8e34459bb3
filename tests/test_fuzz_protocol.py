"""Property-based fuzzing of every visitor and staff endpoint, against the real stack.

Hypothesis generates frames and requests (random JSON and non-JSON, binary frames,
huge frames, deeply nested JSON, invalid UTF-8, wrong types in every field, unknown
types, odd headers, bodies, query strings and content types) and sends them to the
live uvicorn server and Celery worker. An oracle written from docs/protocol.md says
which answers are allowed for each input; every answer must be one of them: a
protocol error with the right code, or a valid response. Never a 5xx, never a dead
process, never a traceback in the servers' logs, and the database holds exactly
the messages the server acknowledged.

The hand-written hostile inputs of tests/test_protocol_input.py are not repeated
here: these tests look for what nobody thought to write down.

Runs are bounded and reproducible: a fixed seed and 400 to 1,000 examples per
surface by default (about 2,900 in all, well under a minute on an idle machine). A
nightly job sets FUZZ_EXAMPLES (a multiplier, e.g. 20) and FUZZ_SEED (any integer;
"random" draws one, printed with the results) for a larger search; FUZZ_SHRINK=1
shrinks a failure to a minimal example.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import websockets
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from conversations.models import Conversation, InternalNote, Message
from tests.protocol_helpers import FOREIGN_ORIGIN
from tests.scripted_llm import Script
from tests.test_agents import make_user, session_cookie
from tests.visitor import ORIGIN, Visitor

# --- Run size and reproducibility ------------------------------------------------------

_SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
_SEED_SETTING = os.environ.get("FUZZ_SEED", "20261201")
FUZZ_SEED = random.randrange(2**32) if _SEED_SETTING == "random" else int(_SEED_SETTING)

# Limits of the stack under test (supportbot.settings defaults; tests/stack.py).
WS_MAX_FRAME_BYTES = 64 * 1024
ASGI_WS_MAX_SIZE = 1024 * 1024
MESSAGE_MAX_CHARS = 4000
MAX_CLIENT_ID = 100
HTTP_MAX_BODY = 16 * 1024

# The longest wait for one answer or close. Answers take milliseconds; this only
# bounds a hang, on a machine that may be busy with other work.
WAIT = 30.0

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_BIG = 1009
CLOSE_INVALID_DATA = 1007

# Every code the visitor protocol defines for an `error` event (docs/protocol.md).
VISITOR_ERROR_CODES = {
    "bad_request",
    "too_long",
    "rate_limited",
    "conversation_closed",
    "reply_failed",
    "unavailable",
}
# What the staff socket may answer (docs/agent-console.md).
STAFF_ERROR_CODES = {
    "bad_request",
    "too_long",
    "forbidden",
    "not_found",
    "not_yours",
    "already_taken",
    "conversation_closed",
    "unavailable",
}
# Errors that mean the server failed, not the input: none is acceptable in a fuzz run
# that injects no fault.
SERVER_FAILURE_CODES = {"unavailable", "reply_failed"}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, round(examples * _SCALE)),
        # A hung server is a bug: no example may take this long (generous: the machine
        # may be busy with other work).
        deadline=timedelta(seconds=3 * WAIT),
        # The examples share one live stack on purpose; nothing to store between runs.
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        print_blob=True,
        # The examples change the server's state, so a failure may depend on the ones
        # before it and shrinking would mostly replay against a different state, slowly.
        # The failing example is reported as drawn; FUZZ_SHRINK=1 shrinks anyway.
        phases=list(Phase) if os.environ.get("FUZZ_SHRINK") else [Phase.explicit, Phase.generate],
    )


# --- Generic strategies -------------------------------------------------------------------

# Text as JSON can carry it: any code point, lone surrogates and NUL included.
any_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, exclude_categories=()),
        st.sampled_from(["\x00", "\ud800", "\udfff", "\u3000", "\ufeff", "\u202e", " ", "\n"]),
    ),
    max_size=30,
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
# Values of a wrong type for a field expecting a string (or a bool, or an int).
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
)


def dumps(value: Any, *, ascii_only: bool = True) -> str:
    """JSON as a client would write it; Python's encoder also writes NaN and Infinity,
    which strict parsers refuse, so those reach the server too."""
    return json.dumps(value, ensure_ascii=ascii_only)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def storable(text: str) -> bool:
    """Text PostgreSQL can hold (docs/protocol.md: no NUL, no unpaired surrogate)."""
    return "\x00" not in text and not re.search("[\ud800-\udfff]", text)


def deep(depth: int, kind: str) -> str:
    """JSON nested `depth` levels: arrays, objects, or both, alone or inside a frame."""
    if kind == "array":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    inner = "[" * depth + "]" * depth
    return '{"type": "message", "text": ' + inner + ', "client_id": "deep"}'


@st.composite
def mutated_json(draw: st.DrawFn) -> str:
    """A plausible frame's JSON with a few characters deleted, inserted or changed."""
    base = dumps(
        draw(
            st.sampled_from(
                [
                    {"type": "message", "text": "hello there", "client_id": "m-1"},
                    {"type": "ping"},
                    {"type": "typing", "on": True},
                    {"type": "handoff"},
                ]
            )
        )
    )
    chars = list(base)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(chars)))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        noise = draw(st.sampled_from(list('{}[]",:\\ 0aé\x00\x7f\u2028')))
        if action == "delete" and chars:
            del chars[min(position, len(chars) - 1)]
        elif action == "insert":
            chars.insert(position, noise)
        elif chars:
            chars[min(position, len(chars) - 1)] = noise
    return "".join(chars)


# --- What the visitor socket may answer (the oracle) ----------------------------------


@dataclass(frozen=True)
class Expect:
    """The answers docs/protocol.md allows for one frame after `ready`."""

    kind: str  # "error", "close", "pong", "quiet", "handoff" or "message"
    codes: frozenset = frozenset()  # error codes, or close codes
    client_id: str | None = None  # for "message": the frame's client_id (None: generated)
    text: str = ""  # for "message": the text as it must be stored
    error_client_id: str | None = None  # the client_id an error must carry


def expect_text_frame(raw: str) -> Expect:
    size = utf8_len(raw)
    if size > ASGI_WS_MAX_SIZE:
        return Expect("close", frozenset({CLOSE_TOO_BIG}))
    if size > WS_MAX_FRAME_BYTES:
        return Expect("error", frozenset({"too_long"}))
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        return Expect("error", frozenset({"bad_request"}))
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return Expect("error", frozenset({"bad_request"}))
    kind = frame["type"]
    if kind == "ping":
        return Expect("pong")
    if kind == "handoff":
        return Expect("handoff")
    if kind == "typing":
        if isinstance(frame.get("on"), bool):
            return Expect("quiet")
        return Expect("error", frozenset({"bad_request"}))
    if kind != "message":
        return Expect("error", frozenset({"bad_request"}))
    return expect_message(frame)


def expect_message(frame: dict[str, Any]) -> Expect:
    text = frame.get("text")
    client_id = frame.get("client_id")
    client_id_ok = client_id is None or (
        isinstance(client_id, str) and 0 < len(client_id) <= MAX_CLIENT_ID and storable(client_id)
    )
    # Every rule the frame breaks; the server may report any one of them.
    broken: set[str] = set()
    if not isinstance(text, str):
        broken.add("bad_request")
    else:
        text = text.strip()
        if not storable(text) or not text:
            broken.add("bad_request")
        if len(text) > MESSAGE_MAX_CHARS:
            broken.add("too_long")
    if not client_id_ok:
        broken.add("bad_request")
    # docs/protocol.md: errors answering a message frame carry its client_id when valid.
    echo_id = client_id if client_id_ok and client_id is not None else None
    if broken:
        return Expect("error", frozenset(broken), error_client_id=echo_id)
    return Expect("message", client_id=client_id, text=text)


@dataclass(frozen=True)
class Frame:
    """One client frame: text, bytes (a binary frame), or bytes sent as a text frame."""

    data: str | bytes
    text_frame: bool = True

    def expect(self) -> Expect:
        if isinstance(self.data, str):
            return expect_text_frame(self.data)
        if self.text_frame:
            try:
                return expect_text_frame(self.data.decode("utf-8"))
            except UnicodeDecodeError:
                # RFC 6455: a text frame that is not UTF-8 fails the connection.
                return Expect("close", frozenset({CLOSE_INVALID_DATA}))
        if len(self.data) > ASGI_WS_MAX_SIZE:
            return Expect("close", frozenset({CLOSE_TOO_BIG}))
        return Expect("error", frozenset({"bad_request"}))

    def frame(self) -> Frame:
        return self


client_ids = st.one_of(
    st.none(),
    # A small pool, so repeats (resends of a stored client_id) happen.
    st.sampled_from(["c-1", "c-2", "dup"]),
    st.uuids().map(str),
    any_text,
    st.text(min_size=95, max_size=105),
    wrong_types,
)
message_texts = st.one_of(
    st.text(min_size=1, max_size=60),
    any_text,
    wrong_types,
    st.builds(
        lambda n, pad: pad + "x" * n + pad,
        st.sampled_from([3999, 4000, 4001, 6000]),
        st.sampled_from(["", " ", "\n\t", "\u3000"]),
    ),
)


@st.composite
def message_frames(draw: st.DrawFn) -> Frame:
    frame: dict[str, Any] = {"type": "message"}
    frame["text"] = draw(message_texts)
    if draw(st.booleans()):
        frame["client_id"] = draw(client_ids)
    if draw(st.integers(0, 4)) == 0:
        frame[draw(any_text)] = draw(json_values)  # unknown fields are ignored
    if draw(st.integers(0, 6)) == 0:
        del frame["text"]
    # Raw UTF-8 or \u escapes; a lone surrogate can only travel escaped.
    return Frame(dumps(frame, ascii_only=not _encodable(frame) or draw(st.booleans())))


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class HugeFrame:
    """A frame around one of the server's two size limits, built when sent: drawing
    a megabyte through Hypothesis would be slow, and a failure report names it by
    kind and size instead of printing it."""

    kind: str  # "message", "multibyte", "binary" or "garbage"
    size: int

    def frame(self) -> Frame:
        if self.kind == "binary":
            return Frame(b"\xff" * self.size, text_frame=False)
        if self.kind == "garbage":
            return Frame("z" * self.size)
        char, width = ("x", 1) if self.kind == "message" else ("\u00e9", 2)
        overhead = utf8_len(json.dumps({"type": "message", "client_id": "huge", "text": ""}))
        text = char * max(1, (self.size - overhead) // width)
        return Frame(
            json.dumps({"type": "message", "client_id": "huge", "text": text}, ensure_ascii=False)
        )


huge_frames = st.builds(
    HugeFrame,
    kind=st.sampled_from(["message", "multibyte", "binary", "garbage"]),
    size=st.builds(
        lambda limit, delta: limit + delta,
        st.sampled_from([WS_MAX_FRAME_BYTES, ASGI_WS_MAX_SIZE]),
        st.sampled_from([-30, -1, 0, 1, 4096]),
    ),
)


# Messages most likely to be valid, so the store-and-acknowledge path gets its share.
def plausible_messages() -> st.SearchStrategy[Frame]:
    return st.builds(
        lambda text, client_id: Frame(dumps({"type": "message", "text": text, **client_id})),
        st.text(min_size=1, max_size=300),
        st.one_of(st.just({}), st.uuids().map(lambda u: {"client_id": str(u)}),
                  st.sampled_from(["c-1", "c-2", "dup"]).map(lambda c: {"client_id": c})),
    )  # fmt: skip


visitor_frames = st.one_of(
    message_frames(),
    # Three times (one_of picks its branches evenly, and merges a repeated one).
    plausible_messages(),
    plausible_messages(),
    plausible_messages(),
    st.builds(lambda on: Frame(dumps({"type": "typing", "on": on})), json_scalars),
    # Known types with extra or wrong fields, unknown types, non-string types.
    st.builds(
        lambda kind, extra: Frame(dumps({"type": kind, **extra})),
        st.sampled_from(["ping", "handoff", "typing", "hello", "Message", "PING", "", "done"]),
        st.dictionaries(
            st.sampled_from(["on", "token", "last_seq", "text", "x"]), json_values, max_size=3
        ),
    ),
    st.builds(lambda kind: Frame(dumps({"type": kind})), any_text),
    st.builds(lambda kind: Frame(dumps({"type": kind, "text": "hi"})), wrong_types),
    # Any JSON value at all, and JSON that almost parses.
    st.builds(lambda value: Frame(dumps(value)), json_values),
    mutated_json().map(Frame),
    st.text(max_size=50).map(Frame),
    # Deep nesting, alone or inside a frame. The server parses what Python's json
    # module parses (about 1,000 levels, its recursion limit) and calls deeper frames
    # unreadable; depths near that limit are left out because this process's limit
    # differs (Hypothesis raises it), which would make the oracle disagree.
    st.builds(
        lambda depth, kind: Frame(deep(depth, kind)),
        st.sampled_from([10, 200, 5000, 20_000, 40_000]),
        st.sampled_from(["array", "object", "field"]),
    ),
    # Binary frames (any bytes), and text frames of bytes that are not UTF-8.
    st.builds(lambda data: Frame(data, text_frame=False), st.binary(max_size=200)),
    st.builds(
        lambda data: Frame(b'{"type": "ping", "x": "' + data + b'"}', text_frame=True),
        st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]),
    ),
    huge_frames,
)


# --- Server events must have the protocol's shapes -----------------------------------------

MESSAGE_ROLES = {"visitor", "assistant", "agent", "system"}
MESSAGE_STATUSES = {"complete", "streaming", "failed", "withdrawn"}
CONVERSATION_STATUSES = {"bot", "waiting", "agent", "closed"}


def check_timestamp(value: object) -> None:
    assert isinstance(value, str), value
    assert datetime.fromisoformat(value).tzinfo is not None, value


def check_message(message: dict[str, Any]) -> None:
    assert isinstance(message["id"], str) and message["id"], message
    assert type(message["seq"]) is int and message["seq"] >= 1, message
    assert message["role"] in MESSAGE_ROLES, message
    assert isinstance(message["text"], str), message
    assert message["status"] in MESSAGE_STATUSES, message
    check_timestamp(message["created_at"])
    assert isinstance(message["sources"], list), message
    if message["role"] == "visitor":
        assert isinstance(message["client_id"], str) and message["client_id"], message
    if message["status"] == "withdrawn":
        assert message["text"] == "", message


def check_visitor_event(event: dict[str, Any]) -> None:
    """A server event as docs/protocol.md describes it (extensions included)."""
    kind = event.get("type")
    if kind in ("message", "done"):
        check_message(event["message"])
    elif kind == "delta":
        assert isinstance(event["message_id"], str) and type(event["index"]) is int
        assert isinstance(event["text"], str)
    elif kind == "status":
        assert event["status"] in CONVERSATION_STATUSES and type(event["seq"]) is int
    elif kind == "typing":
        assert event["role"] in ("assistant", "agent") and isinstance(event["on"], bool)
    elif kind == "withdrawn":
        assert isinstance(event["message_id"], str) and event["reason"] == "moderation"
    elif kind == "error":
        assert event["code"] in VISITOR_ERROR_CODES, event
        assert isinstance(event["detail"], str) and event["detail"], event
        if event["code"] == "rate_limited":
            assert type(event["retry_after"]) is int and event["retry_after"] >= 1, event
    elif kind == "ready":
        assert event["conversation"]["status"] in CONVERSATION_STATUSES
        assert type(event["last_seq"]) is int
    else:
        assert kind == "pong", event


# --- A socket that keeps reading ----------------------------------------------------------


class LiveSocket:
    """A websocket whose frames are read as they come, so a test can look back."""

    def __init__(self, ws: websockets.ClientConnection):
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []  # the frames as sent, for scans
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.ws.recv()
                # The server only ever sends JSON objects in text frames.
                assert isinstance(raw, str), raw
                self.raw.append(raw)
                event = json.loads(raw)
                assert isinstance(event, dict), event
                async with self._arrived:
                    self.events.append(event)
                    self._arrived.notify_all()
        except websockets.ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd is not None else None
        finally:
            self.closed.set()
            async with self._arrived:
                self._arrived.notify_all()

    async def send(self, frame: Frame | dict[str, Any]) -> None:
        if isinstance(frame, dict):
            await self.ws.send(json.dumps(frame))
        elif isinstance(frame.data, str):
            await self.ws.send(frame.data)
        else:
            await self.ws.send(frame.data, text=frame.text_frame)

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], start: int, timeout: float = WAIT
    ) -> int:
        """The index of the first event from `start` on that satisfies predicate
        (called once per event, in order, so it may count)."""
        index = start
        async with asyncio.timeout(timeout), self._arrived:
            while True:
                while index < len(self.events):
                    if predicate(self.events[index]):
                        return index
                    index += 1
                assert not self.closed.is_set(), f"closed {self.close_code} while waiting"
                await self._arrived.wait()

    async def round_trip(self, start: int, *, pongs: int = 1) -> list[dict[str, Any]]:
        """Ping; the events from `start` up to the pong (which proves the socket lives).

        `pongs` counts the pongs owed from `start` on, this ping's included: a fuzzed
        frame may be a ping itself, and a pong left unread would end the next wait early.
        """
        await self.send({"type": "ping"})
        seen = 0

        def last_pong(event: dict[str, Any]) -> bool:
            nonlocal seen
            seen += event["type"] == "pong"
            return seen == pongs

        pong = await self.wait_for(last_pong, start)
        return [e for e in self.events[start:pong] if e["type"] != "pong"]

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def open_socket(
    ws_url: str, path: str, *, origin: str | None = ORIGIN, headers: dict | None = None
) -> LiveSocket:
    ws = await websockets.connect(
        ws_url + path, origin=origin, max_size=None, additional_headers=headers or {}
    )
    return LiveSocket(ws)


# --- The visitor socket, after hello -----------------------------------------------------


@dataclass
class FuzzedConversation:
    """One fuzzed conversation and what the client was told about it."""

    id: str
    token: str
    acked: dict[str, str] = field(default_factory=dict)  # client_id -> message id
    seen_ids: set[str] = field(default_factory=set)  # every message id heard of
    # What was sent and how it was classified, for a failure report.
    sent: list[str] = field(default_factory=list)


class VisitorFuzzer:
    """Sends fuzzed frames over a visitor socket; rotates to a fresh conversation
    (and visitor token) now and then so the per-visitor rate limit does not answer
    every message, and reconnects after a close the protocol allows."""

    # About 25 valid messages each: some meet the per-visitor limit (20 a minute).
    PER_CONVERSATION = 150

    def __init__(self, stack, site_key: str, mark: LogMark):
        self.stack = stack
        self.site_key = site_key
        self.mark = mark
        self.conversations: list[FuzzedConversation] = []
        self.socket: LiveSocket | None = None
        self.sent_here = 0
        self.examples = 0
        self.outcomes: dict[str, int] = {}
        self.absorbed = 0  # events of the current socket already checked

    @property
    def current(self) -> FuzzedConversation:
        return self.conversations[-1]

    async def _connect(self) -> None:
        conversation = self.current
        self.socket = await open_socket(
            self.stack.ws_url, f"/ws/v1/conversations/{conversation.id}/"
        )
        self.absorbed = 0
        await self.socket.send({"type": "hello", "token": conversation.token, "last_seq": 0})
        ready = await self.socket.wait_for(lambda e: e["type"] == "ready", 0)
        # The replay: every stored message of the conversation so far.
        await self.socket.round_trip(ready)
        self._absorb()

    async def _rotate(self) -> None:
        if self.socket is not None:
            await self.settle()
            await self.socket.close()
        visitor = Visitor(self.stack.http_url, self.stack.ws_url, self.site_key)
        data = await in_thread(visitor.start)
        self.conversations.append(FuzzedConversation(data["conversation"]["id"], visitor.token))
        self.sent_here = 0
        await self._connect()

    def _absorb(self) -> None:
        """Check and record every event not looked at yet (also those that arrived
        between two exchanges)."""
        assert self.socket is not None
        events = self.socket.events[self.absorbed :]
        self.absorbed += len(events)
        for event in events:
            check_visitor_event(event)
            assert event["type"] != "error" or event["code"] not in SERVER_FAILURE_CODES, event
            if event["type"] in ("message", "done"):
                self.current.seen_ids.add(event["message"]["id"])

    async def exchange(self, drawn: Frame | HugeFrame) -> None:
        if self.socket is None or self.sent_here >= self.PER_CONVERSATION:
            await self._rotate()
        elif self.socket.closed.is_set():
            await self._connect()  # after a failed example, while Hypothesis shrinks
        assert self.socket is not None
        self.sent_here += 1
        self.examples += 1
        frame = drawn.frame()
        expect = frame.expect()
        self.current.sent.append(f"{expect.kind}: {frame.data[:80]!r}")
        socket = self.socket
        start = len(socket.events)
        await socket.send(frame)
        if expect.kind == "close":
            async with asyncio.timeout(WAIT):
                await socket.closed.wait()
            assert socket.close_code in expect.codes, (socket.close_code, expect)
            self._absorb()
            self._count(f"close {socket.close_code}")
            await self._connect()
            return
        between = await socket.round_trip(start, pongs=2 if expect.kind == "pong" else 1)
        self._absorb()
        errors = [e for e in between if e["type"] == "error"]
        if expect.kind == "error":
            assert len(errors) == 1, (errors, expect)
            assert errors[0]["code"] in expect.codes, (errors[0], expect)
            if expect.error_client_id is not None:
                assert errors[0].get("client_id") == expect.error_client_id, (errors[0], expect)
            self._count(errors[0]["code"])
        elif expect.kind in ("pong", "quiet"):
            assert errors == [], errors
            self._count(expect.kind)
        elif expect.kind == "handoff":
            assert [e["code"] for e in errors] in ([], ["rate_limited"]), errors
            self._count("handoff")
        else:
            await self._message_outcome(expect, start, errors)

    async def _message_outcome(self, expect: Expect, start: int, errors: list[dict]) -> None:
        """A valid message is acknowledged (echoed) or refused with rate_limited: one of
        the two, never neither and never both."""
        assert self.socket is not None
        if errors:
            assert [e["code"] for e in errors] == ["rate_limited"], errors
            if expect.client_id is not None:
                assert errors[0]["client_id"] == expect.client_id, errors
            self._count("rate_limited")
            return
        known = set(self.current.acked)

        def is_echo(event: dict[str, Any]) -> bool:
            if event["type"] != "message" or event["message"]["role"] != "visitor":
                return False
            client_id = event["message"]["client_id"]
            if expect.client_id is not None:
                return client_id == expect.client_id
            return client_id.startswith("server-") and client_id not in known

        index = await self.socket.wait_for(is_echo, start)
        self._absorb()
        echo = self.socket.events[index]["message"]
        client_id = echo["client_id"]
        if client_id in known:
            # A resend: the stored message comes back, whatever text the repeat carried.
            assert self.current.acked[client_id] == echo["id"], echo
            self._count("resend")
        else:
            assert echo["text"] == expect.text, (echo, expect)
            self.current.acked[client_id] = echo["id"]
            self._count("stored")

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def settle(self, timeout: float = WAIT) -> None:
        """Wait until the current conversation is quiet: every reply final and every
        stored message heard of by the client (or the timeout, which the final
        comparison then reports)."""
        assert self.socket is not None
        conversation = self.current
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = len(self.socket.events)
            await self.socket.round_trip(start)
            self._absorb()
            stored, busy = await in_thread(lambda: _stored_and_busy(conversation.id))
            # A visitor message is moderated by its task, which then writes the reply:
            # with none pending and no task running, no reply is still to come.
            if not busy and not self.mark.worker_busy() and stored <= conversation.seen_ids:
                return
            await asyncio.sleep(0.2)
        unseen = await in_thread(
            lambda: list(
                Message.objects.filter(conversation_id=conversation.id)
                .exclude(pk__in=[int(pk) for pk in conversation.seen_ids])
                .values("pk", "seq", "role", "status", "client_id", "text")
            )
        )
        raise AssertionError(
            f"never heard of: {unseen}\nsent: {conversation.sent}\n"
            f"last events: {self.socket.events[-50:]}"
        )

    async def finish(self) -> None:
        if self.socket is not None:
            await self.settle()
            await self.socket.close()


async def in_thread(func: Callable[[], Any]) -> Any:
    """Run ORM code off the event loop, closing the thread's connection after it
    (left open, it would keep the test database from being dropped)."""
    from django.db import connection

    def run() -> Any:
        try:
            return func()
        finally:
            connection.close()

    return await asyncio.to_thread(run)


def _stored_and_busy(conversation_id: str) -> tuple[set[str], bool]:
    rows = Message.objects.filter(conversation_id=conversation_id)
    busy = (
        rows.filter(status=Message.Status.STREAMING).exists()
        or rows.filter(role=Message.Role.VISITOR, moderation=Message.Moderation.PENDING).exists()
    )
    return {str(pk) for pk in rows.values_list("pk", flat=True)}, busy


def assert_stored_exactly_what_was_acknowledged(conversations: list[FuzzedConversation]) -> None:
    for conversation in conversations:
        rows = Message.objects.filter(conversation_id=conversation.id)
        visitor_rows = {
            row.client_id: str(row.pk) for row in rows.filter(role=Message.Role.VISITOR)
        }
        assert visitor_rows == conversation.acked, conversation.id
        # Every stored row reached the client, and the client heard of no other.
        assert {str(pk) for pk in rows.values_list("pk", flat=True)} == conversation.seen_ids
        assert not rows.filter(status=Message.Status.STREAMING).exists()


# --- Liveness, logs -------------------------------------------------------------------------


class LogMark:
    """The servers' log output from now on (the session's stack has older lines)."""

    def __init__(self, stack):
        self.children = (stack.asgi, stack.worker)
        self.offsets = [child.log_path.stat().st_size for child in self.children]

    def new_lines(self, child_index: int | None = None) -> str:
        out = []
        for index, (child, offset) in enumerate(zip(self.children, self.offsets, strict=True)):
            if child_index is None or index == child_index:
                with open(child.log_path, "rb") as log:
                    log.seek(offset)
                    out.append(log.read().decode("utf-8", "replace"))
        return "\n".join(out)

    def worker_busy(self) -> bool:
        """Whether the worker has a task it received (since the mark) and not finished,
        by Celery's own log lines."""
        received, finished = set(), set()
        for task_id, what in _TASK_LINE.findall(self.new_lines(child_index=1)):
            (received if what == "received" else finished).add(task_id)
        return bool(received - finished)


_TASK_LINE = re.compile(r"Task [\w.]+\[([0-9a-f-]+)\] (received|succeeded|raised|failed|retry)")


def assert_healthy(stack, site_key: str, llm, mark: LogMark) -> None:
    """Both processes alive, a normal conversation works, and no traceback was logged."""
    assert stack.asgi.alive() and stack.worker.alive()
    llm.enqueue(Script(tokens=["Still", " here."]), match="are you still there")
    visitor = Visitor(stack.http_url, stack.ws_url, site_key)
    conversation = visitor.start()

    async def scenario() -> tuple[list[dict], dict]:
        async with visitor.socket(conversation) as socket:
            await socket.say("are you still there?")
            return await socket.reply()

    events, done = asyncio.run(scenario())
    assert done["status"] == "complete" and done["text"] == "Still here."
    assert [e for e in events if e["type"] == "error"] == []
    problems = log_problems(mark.new_lines())
    assert problems == [], "\n".join(problems)


def log_problems(logs: str) -> list[str]:
    """Lines logged at ERROR or above, and each traceback's last line (the exception)."""
    lines = logs.splitlines()
    problems = [line for line in lines if re.search(r"\b(ERROR|CRITICAL)\b", line)]
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            problems.append("traceback: " + line)
            in_traceback = False
    return problems


# --- Tests -------------------------------------------------------------------------------------


def test_the_visitor_socket_answers_any_frame_by_the_protocol(stack, site, llm):
    mark = LogMark(stack)
    fuzzer = VisitorFuzzer(stack, site.public_key, mark)

    with asyncio.Runner() as runner:

        @fuzz_settings(examples=1000)
        @seed(FUZZ_SEED)
        @given(frame=visitor_frames)
        def one_frame(frame: Frame | HugeFrame) -> None:
            runner.run(asyncio.wait_for(fuzzer.exchange(frame), 3 * WAIT))

        started = time.monotonic()
        one_frame()
        runner.run(fuzzer.finish())
    elapsed = time.monotonic() - started
    print(f"visitor socket: {fuzzer.examples} frames in {elapsed:.1f}s, seed {FUZZ_SEED}")
    print(f"outcomes: {sorted(fuzzer.outcomes.items())}")

    # The run reached every kind of answer, so the oracle was actually exercised.
    expected = {"bad_request", "too_long", "stored", "resend", "rate_limited", "pong", "quiet"}
    assert expected | {"close 1009", "close 1007"} <= set(fuzzer.outcomes), fuzzer.outcomes
    assert_stored_exactly_what_was_acknowledged(fuzzer.conversations)
    assert_healthy(stack, site.public_key, llm, mark)


# --- The HTTP API ------------------------------------------------------------------------------


@dataclass
class HttpWorld:
    """What the HTTP oracle needs to know about the server's state."""

    http_url: str
    site_key: str
    conversation_id: str  # owned by `token`
    token: str
    other_token: str  # a genuine token of the same site that owns another conversation
    foreign_token: str  # a genuine token of another site


# Symbolic values, resolved against the HttpWorld when the request is built.
VALID_KEY, OWN, OTHER, FOREIGN_SITE = "<site key>", "<own token>", "<other token>", "<foreign>"

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
)  # what a header value can carry as plain text
origins = st.one_of(
    st.none(),
    st.sampled_from([ORIGIN, ORIGIN + "/", ORIGIN.upper(), FOREIGN_ORIGIN, "null", "*", ""]),
    header_text,
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=latin-1",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
        ]
    ),
    header_text,
)


@dataclass(frozen=True)
class HttpCase:
    """One request, described symbolically so Hypothesis can print and vary it."""

    method: str
    endpoint: str  # "create", "messages", "widget", "healthz"
    body: Any = None  # create: a dict (resolved), or ("raw", bytes), ("deep", n), ("big", n)
    path_id: str = OWN  # messages: OWN, "random", "upper", or a raw path segment
    auth: str | None = None  # messages: header value, with OWN/OTHER/FOREIGN_SITE inside
    query: str | None = None  # messages: the raw query string
    site_key: str = VALID_KEY  # widget: the key, or text to quote into the path
    origin: str | None = ORIGIN
    content_type: str | None = "application/json"
    host: str | None = None  # None: the right one
    extra: tuple[tuple[str, bytes], ...] = ()  # any other headers

    def _resolve(self, value: str, world: HttpWorld) -> str:
        return (
            value.replace(VALID_KEY, world.site_key)
            .replace(OWN, world.token)
            .replace(OTHER, world.other_token)
            .replace(FOREIGN_SITE, world.foreign_token)
        )

    def body_bytes(self, world: HttpWorld) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, tuple):
            kind, value = self.body
            if kind == "raw":
                return value
            if kind == "deep":
                return deep(value, "object").encode()
            # "big": a good request padded to exactly `value` bytes.
            stub = json.dumps({"site_key": world.site_key, "pad": ""})
            return json.dumps(
                {"site_key": world.site_key, "pad": "p" * (value - len(stub))}
            ).encode()
        resolved = {
            key: self._resolve(item, world) if isinstance(item, str) else item
            for key, item in self.body.items()
        }
        return dumps(resolved).encode("utf-8", "surrogatepass")

    def path(self, world: HttpWorld) -> str:
        if self.endpoint == "create":
            return "/api/v1/conversations"
        if self.endpoint == "healthz":
            return "/healthz"
        if self.endpoint == "widget":
            return f"/api/v1/sites/{quote(self._resolve(self.site_key, world), safe='')}/widget"
        segment = {
            OWN: world.conversation_id,
            "upper": world.conversation_id.upper(),
            "random": str(uuid.uuid5(uuid.NAMESPACE_URL, world.conversation_id)),
        }.get(self.path_id)
        if segment is None:
            segment = quote(self.path_id, safe="")
        return f"/api/v1/conversations/{segment}/messages"

    def headers(self, world: HttpWorld) -> dict[str, bytes]:
        # HTTP drops whitespace around a header value (and the client refuses to send
        # it), so values go out stripped; the oracle strips them too.
        headers: dict[str, bytes] = {}
        if self.origin is not None:
            headers["Origin"] = self.origin.strip(" \t").encode()
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type.strip(" \t").encode()
        if self.auth is not None:
            headers["Authorization"] = self._resolve(self.auth, world).strip(" \t").encode()
        if self.host is not None:
            headers["Host"] = self.host.encode()
        for name, value in self.extra:
            headers.setdefault(name, value)
        return headers

    def expected(self, world: HttpWorld) -> set[int]:
        """The statuses docs/protocol.md allows, in its order of checks."""
        if self.host is not None and not host_allowed(self.host):
            return {400}  # DisallowedHost
        if not self._routed(world):
            return {404}  # Django's own: no such URL
        if self.method == "OPTIONS":
            return {204} if self.endpoint != "healthz" else {405}
        allowed_methods = {"create": {"POST"}, "healthz": {"GET"}}.get(self.endpoint, {"GET"})
        if self.method not in allowed_methods:
            return {405}
        origin_ok = self.origin is None or self.origin.strip(" \t").rstrip("/") == ORIGIN
        if self.endpoint == "healthz":
            return {200}
        if self.endpoint == "widget":
            key = self._resolve(self.site_key, world)
            if key != world.site_key:
                return {404}
            return {200} if origin_ok else {403}
        if self.endpoint == "create":
            return {self._create_status(world, origin_ok)}
        return {self._messages_status(world, origin_ok)}

    def _create_status(self, world: HttpWorld, origin_ok: bool) -> int:
        raw = self.body_bytes(world)
        if len(raw) > HTTP_MAX_BODY:
            return 400
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return 400
        if not isinstance(body, dict) or not isinstance(body.get("site_key"), str):
            return 400
        if body["site_key"] != world.site_key:
            return 403
        if not origin_ok:
            return 403
        if body.get("visitor_token") is not None and not isinstance(body["visitor_token"], str):
            return 400
        return 201

    def _is_uuid_path(self, world: HttpWorld) -> bool:
        if self.path_id in (OWN, "random"):
            return True
        if self.path_id == "upper":
            return False  # the <uuid:> converter takes lower case only
        try:
            uuid.UUID(self.path_id)
        except ValueError:
            return False
        # Django's <uuid:> converter takes only the canonical hyphenated form.
        return bool(re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", self.path_id))

    def _routed(self, world: HttpWorld) -> bool:
        if self.endpoint == "messages":
            return self._is_uuid_path(world)
        if self.endpoint == "widget":
            return "/" not in self._resolve(self.site_key, world)
        return True

    def _messages_status(self, world: HttpWorld, origin_ok: bool) -> int:
        value = self._resolve(self.auth or "", world).strip(" \t")
        scheme, _, token = value.partition(" ")
        token = token.strip()
        genuine = {world.token, world.other_token, world.foreign_token}
        if scheme.lower() != "bearer" or token not in genuine:
            return 401
        if token != world.token or self.path_id != OWN:
            return 404
        if not origin_ok:
            return 403
        pairs = [pair.split("=", 1) for pair in (self.query or "").split("&") if pair]
        values = [
            urllib_unquote(v[1]) if len(v) == 2 else ""
            for v in pairs
            if urllib_unquote(v[0]) == "after_seq"
        ]
        after = values[-1] if values else "0"
        if not (after.isascii() and after.isdigit()) or len(after) > 18:
            return 400
        return 200


def host_allowed(host: str) -> bool:
    """In the stack's ALLOWED_HOSTS (any port), as Django decides it."""
    from django.http.request import split_domain_port, validate_host

    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, ["127.0.0.1", "localhost"])


def urllib_unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text, errors="replace")


@st.composite
def create_cases(draw: st.DrawFn) -> HttpCase:
    kind = draw(st.sampled_from(["object", "object", "object", "json", "raw", "deep", "big"]))
    body: Any
    if kind == "object":
        body = {}
        site_key = draw(st.one_of(st.just(VALID_KEY), any_text, wrong_types, st.just("")))
        if draw(st.integers(0, 5)):
            body["site_key"] = site_key
        if draw(st.booleans()):
            body["visitor_token"] = draw(
                st.one_of(st.sampled_from([OWN, OTHER, FOREIGN_SITE]), any_text, wrong_types)
            )
        if draw(st.integers(0, 3)) == 0:
            body[draw(any_text)] = draw(json_values)
    elif kind == "json":
        body = ("raw", dumps(draw(json_values)).encode("utf-8", "surrogatepass"))
    elif kind == "raw":
        body = ("raw", draw(st.one_of(st.binary(max_size=100), mutated_json().map(str.encode))))
    elif kind == "deep":
        body = ("deep", draw(st.sampled_from([10, 200, 5000, 20_000])))
    else:
        # Around the API's limit, and over Django's own (DATA_UPLOAD_MAX_MEMORY_SIZE).
        body = ("big", draw(st.sampled_from([HTTP_MAX_BODY - 1, HTTP_MAX_BODY, HTTP_MAX_BODY + 1,
                                             3 * 1024 * 1024])))  # fmt: skip
    return HttpCase(
        method=draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "OPTIONS"])),
        endpoint="create",
        body=body,
        origin=draw(origins),
        content_type=draw(content_types),
    )


@st.composite
def messages_cases(draw: st.DrawFn) -> HttpCase:
    auth = draw(
        st.one_of(
            st.none(),
            st.sampled_from(
                [f"Bearer {OWN}", f"bearer {OWN}", f"BEARER  {OWN} ", f"Bearer {OTHER}",
                 f"Bearer {FOREIGN_SITE}", f"Basic {OWN}", OWN, f"Bearer {OWN}x", "Bearer "]
            ),
            header_text,
            header_text.map(lambda text: f"Bearer {text}"),
        )
    )  # fmt: skip
    good_auth = st.just(f"Bearer {OWN}")
    query = draw(
        st.one_of(
            st.none(),
            st.integers(0, 10**20).map(lambda n: f"after_seq={n}"),
            st.text(max_size=20).map(lambda text: f"after_seq={quote(text, safe='')}"),
            st.sampled_from(
                ["after_seq=", "after_seq", "after_seq=-1", "after_seq=1.5", "after_seq=%C2%B2",
                 "after_seq=%ff", "after_seq=%", "after_seq=1&after_seq=x", "after_seq=+1",
                 "x=1&after_seq=2", "after_seq=0000000000000000001"]
            ),
        )
    )  # fmt: skip
    return HttpCase(
        method=draw(st.sampled_from(["GET"] * 6 + ["POST", "DELETE", "OPTIONS", "HEAD"])),
        endpoint="messages",
        path_id=draw(
            st.one_of(
                st.sampled_from([OWN, OWN, "upper", "random"]),
                st.uuids().map(str),
                st.text(min_size=1, max_size=40),
            )
        ),
        auth=draw(st.one_of(good_auth, st.just(auth))),
        query=query,
        origin=draw(origins),
    )


def plausible_creates() -> st.SearchStrategy[HttpCase]:
    """Requests most likely to be good, so the 201 path gets its share."""
    return st.builds(
        lambda token, origin: HttpCase(
            method="POST",
            endpoint="create",
            body={"site_key": VALID_KEY, **({} if token is None else {"visitor_token": token})},
            origin=origin,
        ),
        st.one_of(st.none(), st.sampled_from([OWN, OTHER, FOREIGN_SITE]), st.text(max_size=30)),
        st.sampled_from([ORIGIN, ORIGIN + "/", None]),
    )


# Headers the request's framing depends on are left to the client.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection", "host", "expect",
                   "upgrade", "te", "trailer", "keep-alive", "proxy-connection"}  # fmt: skip
extra_headers = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
            lambda name: name.lower() not in FRAMING_HEADERS
        ),
        st.one_of(
            header_text.map(lambda text: text.strip(" \t").encode()),
            # obs-text: bytes 0x80-0xFF, which HTTP/1.1 still allows in a value.
            st.binary(max_size=20).map(
                lambda data: bytes(b for b in data if b >= 0x80 or 0x21 <= b <= 0x7E)
            ),
            st.sampled_from([b"1.2.3.4, 5.6.7.8", b"unknown", b"\xff" * 10]).map(bytes),
        ),
    ).map(tuple),
    max_size=3,
).map(tuple)


def with_extra_headers(cases: st.SearchStrategy[HttpCase]) -> st.SearchStrategy[HttpCase]:
    return st.builds(
        lambda case, extra: HttpCase(**{**case.__dict__, "extra": extra}), cases, extra_headers
    )


http_cases = st.one_of(
    with_extra_headers(create_cases()),
    with_extra_headers(messages_cases()),
    st.builds(
        lambda extra: HttpCase(
            method="GET",
            endpoint="messages",
            auth=f"Bearer {OWN}",
            extra=(("X-Forwarded-For", extra[0][1]),) if extra else (),
        ),
        extra_headers,
    ),  # fmt: skip
    create_cases(),
    create_cases(),
    plausible_creates(),
    messages_cases(),
    messages_cases(),
    st.builds(
        HttpCase,
        method=st.sampled_from(["GET", "GET", "GET", "POST", "OPTIONS"]),
        endpoint=st.just("widget"),
        site_key=st.one_of(st.just(VALID_KEY), st.text(min_size=1, max_size=70)),
        origin=origins,
    ),
    st.builds(HttpCase, method=st.just("GET"), endpoint=st.just("healthz"), origin=origins),
    # A Host the server does not serve, on any endpoint.
    st.builds(
        HttpCase,
        method=st.just("GET"),
        endpoint=st.sampled_from(["widget", "messages", "healthz"]),
        host=st.one_of(
            st.sampled_from(["evil.example", "127.0.0.1:1", "[::1]", "a" * 300]),
            st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
        ),
    ),  # fmt: skip
)

HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    429: "rate_limited",
}


def test_the_http_api_answers_any_request_by_the_protocol(stack, site, llm):
    from conversations.models import Site

    mark = LogMark(stack)
    owner = Visitor(stack.http_url, stack.ws_url, site.public_key)
    own = owner.start()
    other = Visitor(stack.http_url, stack.ws_url, site.public_key)
    other.start()
    elsewhere = Site.objects.create(name="Elsewhere", allowed_origins=[FOREIGN_ORIGIN])
    foreign = Visitor(stack.http_url, stack.ws_url, elsewhere.public_key, origin=FOREIGN_ORIGIN)
    foreign.start()
    world = HttpWorld(
        stack.http_url, site.public_key, own["conversation"]["id"], owner.token,
        other.token, foreign.token,
    )  # fmt: skip
    conversations_before = Conversation.objects.count()
    messages_before = Message.objects.count()
    created: list[str] = []
    statuses: dict[int, int] = {}

    with httpx.Client(base_url=stack.http_url, timeout=20) as client:

        @fuzz_settings(examples=800)
        @seed(FUZZ_SEED)
        @given(case=http_cases)
        def one_request(case: HttpCase) -> None:
            response = client.request(
                case.method,
                case.path(world) + (f"?{case.query}" if case.query is not None else ""),
                content=case.body_bytes(world) if case.method in ("POST", "PUT") else None,
                headers=case.headers(world),
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, response.text[:500]
            assert response.status_code in case.expected(world), (
                response.status_code,
                response.text[:300],
            )
            check_http_body(case, response, world)
            if response.status_code == 201:
                created.append(response.json()["conversation"]["id"])

        started = time.monotonic()
        one_request()
    elapsed = time.monotonic() - started
    print(f"http: {sum(statuses.values())} requests in {elapsed:.1f}s, seed {FUZZ_SEED}")
    print(f"statuses: {sorted(statuses.items())}")

    assert {200, 201, 204, 400, 401, 403, 404, 405} <= set(statuses), statuses
    # A conversation exists for each 201 and for nothing else; no message was stored.
    assert Conversation.objects.count() == conversations_before + len(created)
    assert set(created) <= {str(pk) for pk in Conversation.objects.values_list("pk", flat=True)}
    assert Message.objects.count() == messages_before
    assert_healthy(stack, site.public_key, llm, mark)


def check_http_body(case: HttpCase, response: httpx.Response, world: HttpWorld) -> None:
    """The protocol's shapes: the views' errors, the 201, the 200 of each endpoint."""
    status = response.status_code
    django_own = (
        (case.host is not None and not host_allowed(case.host))
        or status == 405
        or not case._routed(world)
    )
    if django_own or status == 204 or case.method == "HEAD":
        return
    body = response.json()
    if status >= 400:
        assert body["error"]["code"] == HTTP_ERROR_CODES[status], body
        assert isinstance(body["error"]["detail"], str) and body["error"]["detail"], body
    elif case.endpoint == "create":
        conversation = body["conversation"]
        assert conversation["status"] == "bot", body
        check_timestamp(conversation["created_at"])
        assert body["websocket_url"] == f"/ws/v1/conversations/{conversation['id']}/"
        assert isinstance(body["visitor_token"], str) and len(body["visitor_token"]) <= 200
        sent = json.loads(case.body_bytes(world)).get("visitor_token")
        if sent in (world.token, world.other_token):
            assert body["visitor_token"] == sent  # one visitor keeps one identity
        else:
            assert body["visitor_token"] not in (
                world.token,
                world.other_token,
                world.foreign_token,
            )
    elif case.endpoint == "messages":
        assert type(body["last_seq"]) is int and body["status"] in CONVERSATION_STATUSES
        for message in body["messages"]:
            check_message(message)
    elif case.endpoint == "widget":
        assert set(body) == {"title", "colour", "greeting"}, body


# --- The visitor socket, before hello ----------------------------------------------------


@dataclass(frozen=True)
class FirstFrame:
    """The first frame on a fresh socket: a hello built from parts (the token named
    symbolically), or any frame the after-hello fuzz draws."""

    token: Any = OWN  # OWN, OTHER, FOREIGN_SITE, OWN + suffix, any value, or MISSING
    last_seq: Any = None
    extra: tuple = ()
    raw: Frame | HugeFrame | None = None  # sent instead of a hello when set
    path: str = OWN  # OWN, "upper", "bare" (no hyphens), "random" or a raw path segment

    def frame(self, world: HttpWorld) -> Frame:
        if self.raw is not None:
            return self.raw.frame()
        hello: dict[str, Any] = {"type": "hello"}
        if self.token is not MISSING:
            hello["token"] = (
                self.token.replace(OWN, world.token)
                .replace(OTHER, world.other_token)
                .replace(FOREIGN_SITE, world.foreign_token)
                if isinstance(self.token, str)
                else self.token
            )
        if self.last_seq is not MISSING:
            hello["last_seq"] = self.last_seq
        hello.update(dict(self.extra))
        return Frame(dumps(hello))

    def url_path(self, world: HttpWorld) -> str:
        conversation_id = {
            OWN: world.conversation_id,
            "upper": world.conversation_id.upper(),
            "bare": world.conversation_id.replace("-", ""),
            "random": str(uuid.uuid5(uuid.NAMESPACE_URL, world.conversation_id)),
        }.get(self.path)
        segment = conversation_id or quote(self.path, safe="")
        return f"/ws/v1/conversations/{segment}/"

    def conversation(self, world: HttpWorld) -> uuid.UUID | None:
        """The id the server reads from the path; None when it refuses the path."""
        segment = self.url_path(world).split("/")[-2]
        if not re.fullmatch(r"[0-9a-fA-F-]{32,36}", segment):
            return None  # no route
        try:
            # As lenient as the server's check: hyphens anywhere, any case.
            return uuid.UUID(segment)
        except ValueError:
            return None

    def expected(self, world: HttpWorld) -> tuple[str, set[int]]:
        """("refused", {403}), ("closed", close codes) or ("ready", set())."""
        conversation = self.conversation(world)
        if conversation is None:
            return "refused", {403}  # not a conversation id: no handshake
        frame = self.frame(world)
        if self.raw is not None:
            outcome = frame.expect()
            if outcome.kind == "close":
                return "closed", set(outcome.codes)
            return "closed", {CLOSE_UNAUTHORIZED}
        good = (
            conversation == uuid.UUID(world.conversation_id)
            and frame.data == dumps(json.loads(frame.data))  # plain JSON
            and utf8_len(frame.data) <= WS_MAX_FRAME_BYTES
            and self.token == OWN
            and (
                self.last_seq in (MISSING, None)
                or (type(self.last_seq) is int and self.last_seq >= 0)
            )
            and "type" not in dict(self.extra)
            and "token" not in dict(self.extra)
            and "last_seq" not in dict(self.extra)
        )
        return ("ready", set()) if good else ("closed", {CLOSE_UNAUTHORIZED})


MISSING = "<missing>"

first_frames = st.one_of(
    st.builds(
        FirstFrame,
        token=st.one_of(
            st.sampled_from(
                [
                    OWN,
                    OWN,
                    OTHER,
                    FOREIGN_SITE,
                    MISSING,
                    OWN + "x",
                    "x" + OWN,
                    OWN + "\u0000",
                    OWN.lower(),
                    "",
                ]
            ),
            any_text,
            wrong_types,
        ),
        last_seq=st.one_of(
            st.sampled_from([MISSING, None, 0, 1, 2**63 - 1, 2**63, 2**64, 10**30, -1, True]),
            st.integers(min_value=-(2**80), max_value=2**80),
            wrong_types,
            any_text,
        ),
        extra=st.lists(st.tuples(any_text, json_scalars), max_size=2).map(tuple),
        path=st.one_of(
            st.sampled_from([OWN, OWN, OWN, "upper", "bare", "random"]),
            st.text(alphabet="0123456789abcdefABCDEF-", min_size=30, max_size=38),
        ),
    ),  # fmt: skip
    st.builds(FirstFrame, raw=visitor_frames),
    # Hellos most likely to be good, so `ready` gets its share.
    st.builds(
        FirstFrame,
        last_seq=st.one_of(st.sampled_from([MISSING, None]), st.integers(0, 2**70)),
        path=st.sampled_from([OWN, "upper", "bare"]),
    ),
)


def test_the_first_frame_is_a_good_hello_or_the_socket_closes_with_4401(stack, site, llm):
    from websockets.exceptions import InvalidStatus

    mark = LogMark(stack)
    owner = Visitor(stack.http_url, stack.ws_url, site.public_key)
    own = owner.start()
    other = Visitor(stack.http_url, stack.ws_url, site.public_key)
    other.start()
    world = HttpWorld(stack.http_url, site.public_key, own["conversation"]["id"], owner.token,
                      other.token, "not-a-token-of-any-site")  # fmt: skip
    outcomes: dict[str, int] = {}

    async def one(first: FirstFrame) -> None:
        kind, codes = first.expected(world)
        try:
            socket = await open_socket(stack.ws_url, first.url_path(world))
        except InvalidStatus as refused:
            assert (kind, refused.response.status_code) == ("refused", 403), first
            outcomes["refused"] = outcomes.get("refused", 0) + 1
            return
        assert kind != "refused", first
        try:
            await socket.send(first.frame(world))
            if kind == "ready":
                ready = await socket.wait_for(lambda e: e["type"] == "ready", 0)
                # Nothing was stored, so nothing is replayed; the socket works.
                assert await socket.round_trip(ready + 1) == []
                assert socket.events[ready]["last_seq"] == 0
                outcome = "ready"
            else:
                async with asyncio.timeout(WAIT):
                    await socket.closed.wait()
                # Nothing but the close: no event before a good hello.
                assert socket.events == [] and socket.close_code in codes, (
                    socket.events,
                    socket.close_code,
                )
                outcome = f"close {socket.close_code}"
        finally:
            await socket.close()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    with asyncio.Runner() as runner:

        @fuzz_settings(examples=400)
        @seed(FUZZ_SEED)
        @given(first=first_frames)
        def first_frame(first: FirstFrame) -> None:
            runner.run(asyncio.wait_for(one(first), 3 * WAIT))

        started = time.monotonic()
        first_frame()
    elapsed = time.monotonic() - started
    print(f"first frames: {sum(outcomes.values())} in {elapsed:.1f}s, seed {FUZZ_SEED}")
    print(f"outcomes: {sorted(outcomes.items())}")

    assert {"ready", "close 4401", "refused"} <= set(outcomes), outcomes
    assert not Message.objects.filter(conversation_id=world.conversation_id).exists()
    assert Conversation.objects.get(pk=world.conversation_id).seq == 0
    assert_healthy(stack, site.public_key, llm, mark)


# --- The staff socket ----------------------------------------------------------------------

STAFF_TYPES = ["open", "take_over", "message", "typing", "note", "hand_back", "close", "ping"]
# Frames that name a conversation; what each may answer once its fields are well formed.
STAFF_OUTCOMES = {
    "open": {"not_found"},
    "take_over": {"not_found", "already_taken", "conversation_closed"},
    "message": {"not_found", "not_yours", "conversation_closed"},
    "typing": set(),
    "note": {"not_found"},
    "hand_back": {"not_found", "not_yours", "conversation_closed"},
    "close": {"not_found", "not_yours", "conversation_closed"},
}
REAL = tuple(f"<conversation {n}>" for n in range(5))
NO_SUCH = "<no such conversation>"


@dataclass(frozen=True)
class StaffFrame:
    """A frame of the agent console, its conversation named symbolically."""

    fields: tuple[tuple[str, Any], ...] = ()
    raw: Frame | HugeFrame | None = None

    def frame(self, ids: dict[str, str]) -> Frame:
        if self.raw is not None:
            return self.raw.frame()
        frame = {key: ids.get(value, value) if isinstance(value, str) else value
                 for key, value in self.fields}  # fmt: skip
        return Frame(dumps(frame))

    def allowed(self, ids: dict[str, str]) -> tuple[str, set[str]]:
        """("error", codes): exactly one error with one of these codes;
        ("maybe", codes): no error or one of these; ("pong", set()); ("close", codes)."""
        frame = self.frame(ids)
        if self.raw is not None and not isinstance(frame.data, str) and not frame.text_frame:
            expect = frame.expect()
            return (
                ("close", set(expect.codes))
                if expect.kind == "close"
                else ("error", {"bad_request"})
            )
        try:
            text = frame.data if isinstance(frame.data, str) else frame.data.decode("utf-8")
        except UnicodeDecodeError:
            return "close", {CLOSE_INVALID_DATA}
        if utf8_len(text) > ASGI_WS_MAX_SIZE:
            return "close", {CLOSE_TOO_BIG}
        if utf8_len(text) > WS_MAX_FRAME_BYTES:
            return "error", {"too_long"}
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return "error", {"bad_request"}
        if not isinstance(data, dict) or data.get("type") not in STAFF_TYPES:
            return "error", {"bad_request"}
        kind = data["type"]
        if kind == "ping":
            return "pong", set()
        conversation_id = data.get("conversation_id")
        try:
            well_formed = isinstance(conversation_id, str) and len(conversation_id) <= 36
            well_formed = well_formed and bool(uuid.UUID(conversation_id))
        except ValueError:
            well_formed = False
        if not well_formed:
            return "error", {"bad_request"}
        if kind == "message":
            expect = expect_message(data)
            if expect.kind == "error":
                return "error", set(expect.codes)
        if kind == "typing" and not isinstance(data.get("on"), bool):
            return "error", {"bad_request"}
        if kind == "note":
            note = data.get("text")
            if not isinstance(note, str) or not note.strip() or not storable(note):
                return "error", {"bad_request"}
            if len(note) > 4000:
                return "error", {"too_long"}
        return "maybe", STAFF_OUTCOMES[kind]


staff_values = st.one_of(st.sampled_from([*REAL, *REAL, NO_SUCH]), any_text, wrong_types)


def plausible_staff_frames() -> st.SearchStrategy[StaffFrame]:
    """Well-formed commands on real conversations, so the stateful paths get their share."""
    return st.builds(
        lambda kind, conversation, text, client_id, on: StaffFrame(
            (("type", kind), ("conversation_id", conversation), ("text", text),
             ("client_id", client_id), ("on", on))
        ),
        # Closing ends a conversation's useful life: rarer than the rest.
        st.sampled_from([*STAFF_TYPES, "take_over", "message", "message", "message"]),
        st.sampled_from(REAL),
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                max_size=50).filter(str.strip),
        st.one_of(st.uuids().map(str), st.sampled_from(["a-1", "a-2"])),
        st.booleans(),
    )  # fmt: skip


staff_frames = st.one_of(
    plausible_staff_frames(),
    plausible_staff_frames(),
    plausible_staff_frames(),
    st.builds(
        lambda kind, conversation, text, client_id, on: StaffFrame(
            (("type", kind), ("conversation_id", conversation), ("text", text),
             ("client_id", client_id), ("on", on))
        ),
        st.sampled_from(STAFF_TYPES),
        st.sampled_from([*REAL, NO_SUCH]),
        st.one_of(st.text(min_size=1, max_size=50), message_texts),
        st.one_of(st.uuids().map(str), client_ids.filter(lambda c: c is not None)),
        st.one_of(st.booleans(), json_scalars),
    ),
    st.builds(
        lambda kind, fields: StaffFrame((("type", kind), *fields)),
        st.one_of(st.sampled_from(STAFF_TYPES), any_text, wrong_types),
        st.lists(
            st.tuples(st.sampled_from(["conversation_id", "text", "client_id", "on", "x"]),
                      staff_values),
            max_size=4,
        ),
    ),
    st.builds(StaffFrame, raw=visitor_frames),
)  # fmt: skip


def test_the_staff_socket_answers_any_frame_by_the_protocol(stack, site, llm, django_user_model):
    from conversations.roles import ensure_agents_group

    mark = LogMark(stack)
    agent = make_user(django_user_model, "sam")
    cookies = {
        "agent": session_cookie(agent),
        "not staff": session_cookie(make_user(django_user_model, "vic", staff=False)),
        "staff, no agent group": session_cookie(make_user(django_user_model, "ned", agent=False)),
        "nobody": "",
        "forged": "not-a-session",
    }
    ensure_agents_group()
    ids = {NO_SUCH: str(uuid.uuid4())}  # symbolic name -> conversation id
    # Per conversation: its visitor's socket (which hears every stored message), and the
    # client_ids of agent messages the console accepted and refused.
    watched: dict[str, LiveSocket] = {}
    sent_ids: dict[str, set[str]] = {}
    refused_ids: dict[str, set[str]] = {}
    outcomes: dict[str, int] = {}
    state: dict[str, Any] = {}

    async def console() -> LiveSocket:
        socket = await open_socket(
            stack.ws_url, "/ws/v1/agent/", origin=stack.http_url,
            headers={"Cookie": f"sessionid={cookies['agent']}"},
        )  # fmt: skip
        await socket.wait_for(lambda f: f["type"] == "queue", 0)
        return socket

    async def fresh(name: str) -> None:
        """A new conversation under `name` (at the start, and once one is closed, so
        the fuzz keeps conversations to work on)."""
        visitor = Visitor(stack.http_url, stack.ws_url, site.public_key)
        conversation = await in_thread(visitor.start)
        socket = await open_socket(stack.ws_url, conversation["websocket_url"])
        await socket.send({"type": "hello", "token": visitor.token})
        await socket.wait_for(lambda e: e["type"] == "ready", 0)
        ids[name] = conversation["conversation"]["id"]
        watched[ids[name]] = socket
        sent_ids[ids[name]], refused_ids[ids[name]] = set(), set()

    async def setup() -> None:
        state["console"] = await console()
        for name in REAL:
            await fresh(name)

    async def one(drawn: StaffFrame) -> None:
        socket: LiveSocket = state["console"]
        if socket.closed.is_set():
            socket = state["console"] = await console()
        kind, codes = drawn.allowed(ids)
        frame = drawn.frame(ids)
        start = len(socket.events)
        await socket.send(frame)
        if kind == "close":
            async with asyncio.timeout(WAIT):
                await socket.closed.wait()
            assert socket.close_code in codes, (socket.close_code, codes)
            outcome = f"close {socket.close_code}"
        else:
            between = await socket.round_trip(start, pongs=2 if kind == "pong" else 1)
            for event in between:
                assert event["type"] in ("queue", "thread", "taken", "sent", "event", "error"), (
                    event
                )
            errors = [e for e in between if e["type"] == "error"]
            assert all(e["code"] in STAFF_ERROR_CODES - {"unavailable"} for e in errors), errors
            if kind == "error":
                assert len(errors) == 1 and errors[0]["code"] in codes, (errors, codes)
            else:
                assert len(errors) <= 1 and {e["code"] for e in errors} <= codes, (errors, codes)
            answers = sorted(
                {e["type"] for e in between if e["type"] in ("thread", "taken", "sent")}
            )
            outcome = errors[0]["code"] if errors else (",".join(answers) or kind)
            data = json.loads(frame.data) if kind == "maybe" else {}
            target = data.get("conversation_id")
            if data.get("type") == "message" and isinstance(data.get("client_id"), str):
                if target in sent_ids:
                    (refused_ids if errors else sent_ids)[target].add(data["client_id"])
            if data.get("type") == "close" and not errors and target in watched:
                await fresh(next(name for name in REAL if ids[name] == target))
                outcome = "closed"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def not_allowed(who: str, drawn: StaffFrame) -> None:
        """Anyone but an agent: closed with 4403, and told nothing at all."""
        headers = {"Cookie": f"sessionid={cookies[who]}"} if cookies[who] else {}
        socket = await open_socket(stack.ws_url, "/ws/v1/agent/", origin=stack.http_url,
                                   headers=headers)  # fmt: skip
        try:
            await socket.send(drawn.frame(ids))
        except websockets.ConnectionClosed:
            pass  # closed before the frame went out
        async with asyncio.timeout(WAIT):
            await socket.closed.wait()
        assert socket.events == [] and socket.close_code == CLOSE_FORBIDDEN, (who, socket.events)
        outcomes[f"{who}: 4403"] = outcomes.get(f"{who}: 4403", 0) + 1

    async def drain() -> None:
        """Let every stored message reach the visitors' sockets, then close them all."""
        await asyncio.sleep(1)
        for socket in watched.values():
            await socket.round_trip(len(socket.events))
        for socket in [state["console"], *watched.values()]:
            await socket.close()

    with asyncio.Runner() as runner:
        runner.run(setup())

        @fuzz_settings(examples=600)
        @seed(FUZZ_SEED)
        @given(drawn=staff_frames)
        def agent_frame(drawn: StaffFrame) -> None:
            runner.run(asyncio.wait_for(one(drawn), 3 * WAIT))

        @fuzz_settings(examples=60)
        @seed(FUZZ_SEED)
        @given(who=st.sampled_from([w for w in cookies if w != "agent"]), drawn=staff_frames)
        def outsider_frame(who: str, drawn: StaffFrame) -> None:
            runner.run(asyncio.wait_for(not_allowed(who, drawn), 3 * WAIT))

        started = time.monotonic()
        agent_frame()
        outsider_frame()
        elapsed = time.monotonic() - started
        runner.run(drain())
    print(f"staff socket: {sum(outcomes.values())} frames in {elapsed:.1f}s, seed {FUZZ_SEED}")
    print(f"outcomes: {sorted(outcomes.items())}")

    assert {"bad_request", "pong", "thread", "taken", "closed", "not_found", "not_yours"} <= set(
        outcomes
    ), outcomes
    stored_agent_messages = 0
    for conversation_id, socket in watched.items():
        for event in socket.events:
            check_visitor_event(event)
        heard = {e["message"]["id"] for e in socket.events if e["type"] == "message"}
        rows = Message.objects.filter(conversation_id=conversation_id)
        # The visitor heard of every stored message, and of no other.
        assert {str(pk) for pk in rows.values_list("pk", flat=True)} == heard
        agent_rows = set(rows.filter(role=Message.Role.AGENT).values_list("client_id", flat=True))
        # Every agent message the console was not refused is stored; no refused one is
        # (unless the same client_id was accepted by another frame).
        assert sent_ids[conversation_id] <= agent_rows
        assert not (refused_ids[conversation_id] - sent_ids[conversation_id]) & agent_rows
        stored_agent_messages += len(agent_rows)
    assert stored_agent_messages > 0  # the store path was reached
    assert not Message.objects.filter(conversation_id=ids[NO_SUCH]).exists()
    assert not InternalNote.objects.filter(conversation_id=ids[NO_SUCH]).exists()
    assert_healthy(stack, site.public_key, llm, mark)
