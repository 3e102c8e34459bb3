"""Soak: many visitors chatting with connection churn, memory and connections sampled.

    python -m benchmarks.soak [--minutes 10] [--visitors 200] [--churn 0.2]
                              [--think 2,8] [--reply-words 40] [--drain 45]

Starts the same stack as benchmarks/run.py (scripted model server, a PostgreSQL
database of its own, uvicorn + a Celery worker on the Redis at --redis-url) and
lets --visitors visitors chat for --minutes. Each visitor, in a loop: opens a
conversation or resumes its own, sends a message, reads the streamed reply to
`done`, thinks for a moment, and now and then disconnects and resumes (hello
with the last seq it holds in final form), abandons a reply mid-stream (then
resumes it or walks away), or starts a new conversation. At the start, every
minute and at the end it samples the servers' resident memory (process tree,
/proc), their Redis and PostgreSQL sockets and open files, Redis `INFO`
(clients, memory, keys) and pg_stat_activity for the benchmark's database. It
prints per-minute traffic and resource tables, PASS/FAIL checks (every
acknowledged message answered exactly once, no unbounded growth, no server
errors), and draws the samples as an SVG plot (--plot, default docs/soak.svg).

The run is bounded: visitors send for --minutes, then in-flight replies get
--drain seconds; whatever is still open then is cancelled and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import random
import re
import sys
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import httpx
import psycopg
import redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from benchmarks.run import (
    ConversationRefused,
    ProductStack,
    add_stack_arguments,
    background_load,
    bench_database,
    children_stopped,
    cpu_seconds,
    create_conversation,
    header_line,
    machine_busy_seconds,
    open_visitor_socket,
    percentile,
    run_loop,
    start_product,
    with_database,
)
from tests import stack
from tests.visitor import ORIGIN

ROOT = Path(__file__).resolve().parent.parent
MAX_MINUTES = 10  # the issue bounds a soak run to ten minutes

# Visitors start spread over this many seconds: 200 hellos at one instant measure
# the handshake, not the steady state a soak is about.
RAMP_SECONDS = 20.0

# How one turn's churn (--churn P) splits: P/2 of turns end with a disconnect and a
# resume, P/4 abandon the reply mid-stream (half of those resume it at once, half
# walk away for good), P/4 move to a new conversation.
RECONNECT_SHARE, ABANDON_SHARE, NEW_SHARE = 0.5, 0.25, 0.25

# Growth checks compare the sample at the end of the last minute with the one at the
# end of minute 2: minute 1 holds the ramp-up, pools filling and first-use imports,
# so it is not yet the steady state. Resident memory of a Python server settles
# within a few minutes (allocator arenas, caches) and then moves by a few percent; a
# leak keeps growing. At 200 visitors (about 8,000 messages from minute 2 to 10) 25 %
# of the worker's ~380 MiB is ~12 KiB per message, of the ASGI server's ~170 MiB
# ~5 KiB: the ratio catches gross leaks (per message or per connection); the printed
# least-squares trend (MiB/min) is the finer signal. Connection counts move with
# load inside bounded pools (each asyncio Redis pool grows on demand up to 64, each
# database pool to 20), so they get more room; a connection leak grows with
# reconnects (over a hundred a minute) and passes 1.5x within minutes.
GROWTH_BASE_MARK = 2
RSS_FACTOR = 1.25
CONNECTIONS_FACTOR = 1.5
CONNECTIONS_SLACK = 4  # small counts: one pool connection more is not growth

# What must not appear in a server log during a soak.
LOG_PROBLEMS = re.compile(
    r"Traceback|\bERROR\b|\bCRITICAL\b|Internal Server Error|Exception in ASGI application"
    r'|" 5\d\d\b'  # a request line answered 5xx (uvicorn's websocket and error lines)
)

# Questions with a number that changes every turn: the product hands a conversation to
# a person when the same question comes three times, which would stop the bot answering.
QUESTIONS = (
    "Where is my order {n}?",
    "Can I change the delivery address for order {n}?",
    "How long does the refund for order {n} take?",
    "Do you ship parcel {n} to Canada?",
    "Is item {n} back in stock soon?",
    "What does shipping cost for basket {n}?",
)

FINAL_STATUSES = ("complete", "failed", "withdrawn")


# --- What the visitors saw -----------------------------------------------------------


@dataclass
class Turn:
    """One visitor message and what became of it."""

    client_id: str
    text: str
    t_send: float
    deadline: float
    acked: bool = False  # the server echoed it: stored
    seq: int | None = None
    # The highest seq this visitor had seen in the conversation when it sent: the reply
    # is the first assistant message above it. Not "above the echo's seq": the reply's
    # start can arrive before the echo (they come from different processes).
    seq_floor: int = 0
    reply_id: str | None = None
    next_index: int = 0
    t_first: float | None = None
    outcome: str | None = None  # the reply's final status as this visitor received it
    interrupted: bool = False  # a disconnect came between the send and the final
    abandoned: bool = False  # walked away before the final (checked in the database)
    given_up: bool = False  # no final after two timeouts
    timeouts: int = 0
    resend: bool = False  # the server said "unavailable": send the same client_id again
    sends: int = 0
    wall_send: float = 0.0  # time.time(), to line up with the database's timestamps
    t_final: float | None = None
    final_via: str = ""  # "done" (live) or "replay" (the final form in a resume replay)
    # What the visitor had seen when each timeout struck: for the report.
    timeout_notes: list[str] = field(default_factory=list)


@dataclass
class Minute:
    sent: int = 0
    completed: int = 0
    failed: int = 0
    reconnects: int = 0
    abandoned: int = 0
    new_conversations: int = 0
    errors: Counter = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)


class Tally:
    """Per-minute counts, by the minute in which each thing happened."""

    def __init__(self, t0: float, minutes: int) -> None:
        self.t0 = t0
        self.minutes = minutes
        self.by_minute: dict[int, Minute] = defaultdict(Minute)
        self.anomalies: Counter = Counter()
        self.turns: list[Turn] = []
        self.crashes: list[str] = []  # unexpected exceptions in the client, for debugging

    def at(self, now: float) -> Minute:
        # Minutes 1..N while visitors send; N + 1 is the drain.
        return self.by_minute[min(int((now - self.t0) // 60) + 1, self.minutes + 1)]

    def error(self, now: float, code: str) -> None:
        self.at(now).errors[code] += 1


class ReplyTimeout(Exception):
    pass


class Context:
    def __init__(self, args: argparse.Namespace, product: ProductStack, t0: float) -> None:
        self.args = args
        self.http_url = product.asgi.url
        self.ws_url = product.asgi.ws_url
        self.site_key = product.site_key
        self.t0 = t0
        self.stop_sending = t0 + args.minutes * 60
        self.hard_deadline = self.stop_sending + args.drain
        self.tally = Tally(t0, args.minutes)
        think = [float(x) for x in args.think.split(",")]
        self.think = (think[0], think[-1])

    @staticmethod
    def now() -> float:
        return time.monotonic()


def _brief(event: dict[str, Any]) -> str:
    """An event in a few words, for the trace of a reply that timed out."""
    kind = event.get("type")
    message = event.get("message") or {}
    if kind in ("message", "done"):
        return (
            f"{kind} {message.get('role')} id {message.get('id')} seq {message.get('seq')} "
            f"{message.get('status')}"
        )
    if kind == "delta":
        return f"delta id {event.get('message_id')} #{event.get('index')}"
    if kind == "status":
        return f"status {event.get('status')} seq {event.get('seq')}"
    return str(kind) + (f" {event.get('code')}" if kind == "error" else "")


def classify(exc: BaseException) -> str:
    """A short code for a client-side failure, as it goes in the errors column."""
    if isinstance(exc, ReplyTimeout):
        return "timeout"
    if isinstance(exc, ConversationRefused):
        return f"http_{exc.status}"
    if isinstance(exc, InvalidStatus):
        return f"handshake_{exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        return f"closed_{exc.rcvd.code if exc.rcvd else 'nocode'}"
    if isinstance(exc, TimeoutError):
        return "io_timeout"
    if isinstance(exc, RuntimeError) and "hello refused" in str(exc):
        return "hello_refused"
    if isinstance(exc, OSError):
        return "os_error"
    return type(exc).__name__


class SoakVisitor:
    def __init__(self, index: int, ctx: Context, http: httpx.AsyncClient) -> None:
        self.index = index
        self.ctx = ctx
        self.tally = ctx.tally
        self.http = http
        self.rng = random.Random(ctx.args.seed * 100_003 + index)
        self.token: str | None = None
        self.conversation: dict | None = None
        self.ws: ClientConnection | None = None
        self.turn: Turn | None = None
        self.turns_sent = 0
        self._reset_conversation_state()

    def _reset_conversation_state(self) -> None:
        self.connected_before = False
        self.usable = True
        self.hello_seq = 0
        self.held: set[int] = set()  # seqs held in final form (messages and status changes)
        self.synced = 0  # every seq up to this one is held
        self.max_seq_seen = 0
        self.socket_high = 0  # the highest message/status seq received on this socket
        self.streaming: dict[str, int] = {}  # message id -> seq, held only as streaming
        # The latest events (in short) since this visitor's last send, for the report.
        self.trace: deque[str] = deque(maxlen=40)
        self.finals: set[str] = set()  # assistant message ids held in final form

    # --- The loop ---------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, min(RAMP_SECONDS, self.ctx.args.minutes * 30)))
        try:
            while self.ctx.now() < self.ctx.stop_sending:
                await self._step()
            # Drain: the message in flight (if a failure interrupted it) still gets its reply.
            while self.turn is not None and self.ctx.now() < self.ctx.hard_deadline:
                await self._step(drain=True)
        finally:
            await self.close()

    async def _step(self, drain: bool = False) -> None:
        try:
            await self._turn(drain)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            now = self.ctx.now()
            code = classify(exc)
            self.tally.error(now, code)
            if code == type(exc).__name__:
                self.tally.crashes.append(f"visitor {self.index}: {exc!r}")
            await self.close()
            if self.turn is not None:
                self.turn.interrupted = True
                if isinstance(exc, ReplyTimeout):
                    turn = self.turn
                    turn.timeouts += 1
                    turn.timeout_notes.append(
                        f"+{now - turn.t_send:.1f} s: acked {turn.acked}, reply "
                        f"{turn.reply_id or 'not started'}, {turn.next_index} deltas, floor "
                        f"seq {turn.seq_floor}, events [{' | '.join(self.trace)}]"
                    )
                    if self.turn.timeouts >= 2:
                        # Two full timeouts: stop waiting, let the database check say
                        # whether the reply ever came, and carry on elsewhere.
                        self.turn.given_up = True
                        self.turn = None
                        self.conversation = None
                        return
                    self.turn.deadline = now + self.ctx.args.timeout
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))

    async def _turn(self, drain: bool) -> None:
        ctx, rng = self.ctx, self.rng
        if self.conversation is None or not self.usable:
            await self.close()
            await self._new_conversation()
        if self.ws is None:
            await self._connect()
        turn = self.turn
        if turn is None:
            if drain:
                return
            turn = self._new_turn()
            await self._send(turn)
        elif not turn.acked or turn.resend:
            # Sent before a failure, never acknowledged: the protocol makes a resend
            # with the same client_id safe (stored and answered once).
            await self._send(turn)
        churn = ctx.args.churn
        abandon = not turn.interrupted and rng.random() < churn * ABANDON_SHARE
        if not await self._read_until_final(turn, abandon=abandon):
            self.tally.at(ctx.now()).abandoned += 1
            await self.close()
            if rng.random() < 0.5:
                # Come back to it: the replay carries the text so far, then deltas.
                turn.interrupted = True
                await asyncio.sleep(rng.uniform(0.2, 2.0))
                await self._connect()
                await self._read_until_final(turn, abandon=False)
            else:
                # Walk away for good; the database check at the end looks for its reply.
                turn.abandoned = True
                self.turn = None
                self.conversation = None
                return
        self.turn = None
        if ctx.now() >= ctx.stop_sending:
            return
        await asyncio.sleep(min(rng.uniform(*ctx.think), max(0.0, ctx.stop_sending - ctx.now())))
        if ctx.now() >= ctx.stop_sending:
            return
        draw = rng.random()
        if draw < churn * RECONNECT_SHARE:
            await self.close()
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            await self._connect()
        elif draw < churn * (RECONNECT_SHARE + NEW_SHARE):
            await self.close()
            self.conversation = None

    # --- Protocol steps ---------------------------------------------------------------

    async def _new_conversation(self) -> None:
        # One visitor keeps one token across its conversations, as the widget does.
        self.conversation = await create_conversation(
            self.http, self.ctx.http_url, self.ctx.site_key, self.token
        )
        self.token = self.conversation["visitor_token"]
        self._reset_conversation_state()
        self.tally.at(self.ctx.now()).new_conversations += 1

    def _resume_seq(self) -> int:
        # The highest seq held in final form, kept below any reply held as streaming
        # (docs/protocol.md, "Choosing last_seq").
        seq = self.synced
        if self.streaming:
            seq = min(seq, min(self.streaming.values()) - 1)
        return max(0, seq)

    async def _connect(self) -> None:
        assert self.conversation is not None
        last_seq = self._resume_seq()
        self.ws, ready = await open_visitor_socket(
            self.ctx.ws_url + self.conversation["websocket_url"], ORIGIN, self.token, last_seq
        )
        self.hello_seq = last_seq
        self.socket_high = 0
        if ready["conversation"]["status"] != "bot":
            self.usable = False
        if self.connected_before:
            self.tally.at(self.ctx.now()).reconnects += 1
        self.connected_before = True

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    def _new_turn(self) -> Turn:
        self.turns_sent += 1
        number = self.index * 100_000 + self.turns_sent
        text = self.rng.choice(QUESTIONS).format(n=number)
        now = self.ctx.now()
        turn = Turn(str(uuid.uuid4()), text, now, now + self.ctx.args.timeout)
        turn.wall_send = time.time()
        turn.seq_floor = self.max_seq_seen
        self.trace.clear()
        self.turn = turn
        self.tally.turns.append(turn)
        return turn

    async def _send(self, turn: Turn) -> None:
        assert self.ws is not None
        turn.resend = False
        frame = {"type": "message", "text": turn.text, "client_id": turn.client_id}
        await self.ws.send(json.dumps(frame))
        turn.sends += 1
        if turn.sends == 1:  # resends of the same client_id are not new messages
            self.tally.at(turn.t_send).sent += 1

    async def _read_until_final(self, turn: Turn, *, abandon: bool) -> bool:
        """Events until this turn's reply is final (True), or until its first delta when
        abandoning (False). Raises ReplyTimeout past the turn's deadline."""
        assert self.ws is not None
        while turn.outcome is None:
            if turn.resend:
                await asyncio.sleep(1.0)
                await self._send(turn)
            deadline = min(turn.deadline, self.ctx.hard_deadline)
            remaining = deadline - self.ctx.now()
            if remaining <= 0:
                raise ReplyTimeout
            try:
                raw = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                raise ReplyTimeout from None
            self.handle(json.loads(raw), self.ctx.now())
            if abandon and turn.t_first is not None and turn.outcome is None:
                return False
        return True

    # --- Events -----------------------------------------------------------------

    def handle(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("type")
        turn = self.turn
        if turn is not None:
            self.trace.append(f"+{now - turn.t_send:.1f} {_brief(event)}")
        if kind == "message":
            self._message(event["message"], turn, now)
        elif kind == "delta":
            mid = event["message_id"]
            if (
                turn is not None
                and turn.reply_id is None
                and mid not in self.finals
                and mid not in self.streaming
            ):
                # A delta of a reply whose start (`message`) has not come (yet).
                self.tally.anomalies["delta before its reply's start message"] += 1
                turn.reply_id = mid
            if turn is not None and mid == turn.reply_id:
                index = event["index"]
                if index < turn.next_index:
                    self.tally.anomalies["delta index repeated"] += 1
                elif index > turn.next_index:
                    self.tally.anomalies["delta index skipped"] += index - turn.next_index
                turn.next_index = max(turn.next_index, index + 1)
                if turn.t_first is None:
                    turn.t_first = now
                    if not turn.interrupted:
                        self.tally.at(now).ttft.append(now - turn.t_send)
            elif mid in self.finals:
                self.tally.anomalies["delta after the final"] += 1
        elif kind == "done":
            message = event["message"]
            self._held_final(message["id"], message["seq"])
            if (
                turn is not None
                and turn.reply_id is None
                and message.get("role") == "assistant"
                and message["seq"] > turn.seq_floor
            ):
                self.tally.anomalies["done before its reply's start message"] += 1
                turn.reply_id = message["id"]
            if turn is not None and message["id"] == turn.reply_id:
                self._final(turn, message, now, "done")
            elif message["id"] in self.finals:
                self.tally.anomalies["second final for a reply"] += 1
        elif kind == "error":
            code = event.get("code", "?")
            self.tally.error(now, code)
            if (
                code == "unavailable"
                and turn is not None
                and event.get("client_id") == turn.client_id
                and turn.reply_id is None
            ):
                turn.resend = True
        elif kind == "status":
            self._in_order(event["seq"])
            self._hold(event["seq"])
            if event["status"] != "bot":
                # Handed to a person: the bot stops answering; nothing here asks for it.
                self.tally.anomalies[f"conversation became {event['status']}"] += 1
                self.usable = False
                if turn is not None and turn.reply_id is None:
                    turn.outcome = "handoff"

    def _held_final(self, message_id: str, seq: int) -> None:
        self.streaming.pop(message_id, None)
        self._hold(seq)

    def _hold(self, seq: int) -> None:
        self.held.add(seq)
        self.max_seq_seen = max(self.max_seq_seen, seq)
        while self.synced + 1 in self.held:
            self.synced += 1
            self.held.discard(self.synced)

    def _in_order(self, seq: int) -> None:
        """Count a live event that arrives after one with a higher seq on this socket."""
        if seq < self.socket_high:
            self.tally.anomalies["message or status received after a higher seq"] += 1
        self.socket_high = max(self.socket_high, seq)

    def _message(self, message: dict[str, Any], turn: Turn | None, now: float) -> None:
        mid, seq, role = message["id"], message["seq"], message["role"]
        final = message["status"] != "streaming"
        own_echo = (
            turn is not None and role == "visitor" and message.get("client_id") == (turn.client_id)
        )
        if final and seq <= self.hello_seq and not own_echo:
            # The replay repeated something the hello said this visitor already holds.
            self.tally.anomalies["replayed at or below last_seq"] += 1
        # A resend's echo (to the sender only) and a resumed stream (replayed even below
        # last_seq, with next_index) come out of order by design.
        resent_echo = own_echo and turn is not None and turn.sends > 1
        if not resent_echo and (final or "next_index" not in message):
            self._in_order(seq)
        if final:
            self._held_final(mid, seq)
        else:
            self.streaming[mid] = seq
            self.max_seq_seen = max(self.max_seq_seen, seq)
        if turn is None:
            return
        if own_echo:
            if not turn.acked:
                turn.acked, turn.seq = True, seq
        elif role == "assistant" and turn.reply_id is None and seq > turn.seq_floor:
            # One question in flight per conversation: the next assistant message answers it.
            turn.reply_id = mid
        if role == "assistant" and mid == turn.reply_id:
            if final:
                self._final(turn, message, now, "replay")
            elif "next_index" in message:
                # A resumed stream continues at next_index (a live start has none).
                turn.next_index = message["next_index"]

    def _final(self, turn: Turn, message: dict[str, Any], now: float, via: str) -> None:
        if message["id"] in self.finals:
            self.tally.anomalies["second final for a reply"] += 1
            return
        self.finals.add(message["id"])
        turn.outcome = message["status"]
        turn.t_final, turn.final_via = now, via
        minute = self.tally.at(now)
        if turn.outcome == "complete":
            minute.completed += 1
        else:
            minute.failed += 1
        if not turn.interrupted:
            minute.full.append(now - turn.t_send)


# --- Sampling the servers ----------------------------------------------------------------


@dataclass
class ResourceSample:
    mark: str  # "0".."N" (whole minutes since the start) or "end"
    t: float  # seconds since the start
    rss_kib: dict[str, int]
    fds: dict[str, int]
    redis_sockets: dict[str, int]  # per process, from /proc
    pg_sockets: dict[str, int]
    redis_clients_all: int  # INFO clients: connected_clients of the whole server
    redis_clients_db: int  # CLIENT LIST entries on the benchmark's database
    redis_used_memory: int
    redis_keys: int
    pg_backends: int  # pg_stat_activity rows on the benchmark's database
    # Share of all cores busy since the previous sample: the whole machine (other
    # users included), and the stack's processes with the harness and model stand-in.
    machine_busy: float | None = None
    own_busy: float | None = None


def process_tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _socket_inodes(pids: list[int]) -> tuple[set[str], int]:
    """Socket inodes the processes hold, and how many descriptors they have open."""
    inodes: set[str] = set()
    fds = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                fds += 1
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    return inodes, fds


def _established_by_remote_port() -> dict[str, int]:
    """inode -> remote port of every established TCP connection on this machine."""
    peers: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "01":  # ESTABLISHED
                    peers[cols[9]] = int(cols[2].rsplit(":", 1)[1], 16)
    return peers


class Sampler:
    def __init__(self, pids: dict[str, int], redis_url: str, db_url: str, db_name: str) -> None:
        self.pids = pids
        parts = urlsplit(redis_url)
        self.redis_db = int(parts.path.strip("/") or 0)
        self.redis_port = parts.port or 6379
        # A connection on another database number, so that it is not counted as ours.
        self.redis = redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=self.redis_port,
            db=0 if self.redis_db else 1,
            socket_timeout=10,
        )
        self.admin_url = with_database(db_url, "postgres")
        self.pg_port = urlsplit(db_url).port or 5432
        self.db_name = db_name
        self.samples: list[ResourceSample] = []
        self._cpu_mark: tuple[float, float, float] | None = None  # wall, machine, own

    def _cpu_shares(self) -> tuple[float | None, float | None]:
        own = 0.0
        for pid in self.pids.values():
            tree = [pid] if pid == os.getpid() else process_tree(pid)
            own += sum(cpu_seconds(member) for member in tree)
        now = (time.monotonic(), machine_busy_seconds(), own)
        before, self._cpu_mark = self._cpu_mark, now
        if before is None or now[0] <= before[0]:
            return None, None
        capacity = (now[0] - before[0]) * (os.cpu_count() or 1)
        return (now[1] - before[1]) / capacity, (now[2] - before[2]) / capacity

    def sample(self, mark: str, t: float) -> ResourceSample:
        machine_busy, own_busy = self._cpu_shares()
        peers = _established_by_remote_port()
        rss, fds, redis_sockets, pg_sockets = {}, {}, {}, {}
        for name, pid in self.pids.items():
            # The harness started the servers, so its own tree would hold them all.
            tree = [pid] if pid == os.getpid() else process_tree(pid)
            total = 0
            for member in tree:
                with contextlib.suppress(OSError, RuntimeError):
                    total += stack.rss_kib(member)
            rss[name] = total
            inodes, fds[name] = _socket_inodes(tree)
            redis_sockets[name] = sum(1 for i in inodes if peers.get(i) == self.redis_port)
            pg_sockets[name] = sum(1 for i in inodes if peers.get(i) == self.pg_port)
        clients = self.redis.client_list()
        keyspace = self.redis.info("keyspace").get(f"db{self.redis_db}", {})
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.db_name]
            ).fetchone()
        sample = ResourceSample(
            mark=mark,
            t=t,
            rss_kib=rss,
            fds=fds,
            redis_sockets=redis_sockets,
            pg_sockets=pg_sockets,
            redis_clients_all=int(self.redis.info("clients")["connected_clients"]),
            redis_clients_db=sum(1 for c in clients if int(c.get("db", -1)) == self.redis_db),
            redis_used_memory=int(self.redis.info("memory")["used_memory"]),
            redis_keys=int(keyspace.get("keys", 0)) if isinstance(keyspace, dict) else 0,
            pg_backends=int(row[0]) if row else 0,
            machine_busy=machine_busy,
            own_busy=own_busy,
        )
        self.samples.append(sample)
        return sample

    def key_families(self, limit: int = 200_000) -> Counter:
        """Keys on the benchmark's Redis database by name with digits and ids blurred."""
        conn = self.redis.connection_pool.connection_kwargs
        ours = redis.Redis(host=conn["host"], port=conn["port"], db=self.redis_db)
        families: Counter = Counter()
        try:
            for i, key in enumerate(ours.scan_iter(count=1000)):
                if i >= limit:
                    break
                name = key.decode("utf-8", "replace")
                families[re.sub(r"[0-9a-f]{8,}|\d+", "#", name)[:60]] += 1
        finally:
            ours.close()
        return families

    async def every_minute(self, t0: float, minutes: int) -> None:
        for mark in range(minutes + 1):
            await asyncio.sleep(max(0.0, t0 + 60 * mark - time.monotonic()))
            await asyncio.to_thread(self.sample, str(mark), time.monotonic() - t0)


# --- The database's view -----------------------------------------------------------------


@dataclass
class StoredView:
    visitor_rows: int
    unanswered: int  # visitor messages in bot conversations without any reply row
    unanswered_elsewhere: int  # the same, in conversations handed to a person
    reply_status: Counter
    by_client_id: dict[str, str | None]  # client_id -> reply status (None: no reply)


def stored_view(db_url: str) -> StoredView:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT v.client_id, r.status, c.status FROM conversations_message v "
            "JOIN conversations_conversation c ON c.id = v.conversation_id "
            "LEFT JOIN conversations_message r ON r.reply_to_id = v.id "
            "WHERE v.role = 'visitor'"
        ).fetchall()
    view = StoredView(len(rows), 0, 0, Counter(), {})
    for client_id, reply_status, conversation_status in rows:
        view.by_client_id[client_id] = reply_status
        if reply_status is None:
            if conversation_status == "bot":
                view.unanswered += 1
            else:
                view.unanswered_elsewhere += 1
        else:
            view.reply_status[reply_status] += 1
    return view


def reply_timings(db_url: str, client_ids: list[str]) -> dict[str, tuple]:
    """client_id -> (visitor row created, reply created, reply completed, status), epochs."""
    if not client_ids:
        return {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT v.client_id, extract(epoch FROM v.created_at), "
            "extract(epoch FROM r.created_at), extract(epoch FROM r.completed_at), r.status "
            "FROM conversations_message v "
            "LEFT JOIN conversations_message r ON r.reply_to_id = v.id "
            "WHERE v.client_id = ANY(%s)",
            [client_ids],
        ).fetchall()
    return {
        row[0]: tuple(float(x) if x is not None else None for x in row[1:4]) + (row[4],)
        for row in rows
    }


async def settle(db_url: str, until: float) -> StoredView:
    """The database once no reply is streaming any more (or at `until`)."""
    while True:
        view = await asyncio.to_thread(stored_view, db_url)
        if not view.reply_status.get("streaming") and not view.unanswered:
            return view
        if time.monotonic() >= until:
            return view
        await asyncio.sleep(1.0)


# --- The run ---------------------------------------------------------------------------


@dataclass
class SoakResult:
    tally: Tally
    samples: list[ResourceSample]
    stored: StoredView
    families_base: Counter
    families_end: Counter
    elapsed: float  # seconds from the first visitor to the end sample
    timings: dict[str, tuple]  # reply_timings() of the turns that timed out
    log_problems: list[str] = field(default_factory=list)
    log_warnings: Counter = field(default_factory=Counter)


async def soak(
    args: argparse.Namespace, product: ProductStack, db_url: str, db_name: str
) -> SoakResult:
    pids = {"asgi": product.asgi.process.pid}
    for i, worker in enumerate(product.workers):
        pids[f"worker{i + 1}" if len(product.workers) > 1 else "worker"] = worker.process.pid
    pids["model"] = product.llm.process.pid
    pids["client"] = os.getpid()
    sampler = Sampler(pids, args.redis_url, db_url, db_name)
    t0 = time.monotonic()
    ctx = Context(args, product, t0)
    sampling = asyncio.create_task(sampler.every_minute(t0, args.minutes))
    families_base: Counter = Counter()
    async with httpx.AsyncClient(
        headers={"Origin": ORIGIN}, timeout=30, limits=httpx.Limits(max_connections=50)
    ) as http:
        visitors = [SoakVisitor(i, ctx, http) for i in range(args.visitors)]
        tasks = [asyncio.create_task(v.run()) for v in visitors]
        base_at = t0 + 60 * min(GROWTH_BASE_MARK, args.minutes)
        families_task = asyncio.create_task(_families_at(sampler, base_at))
        _, pending = await asyncio.wait(tasks, timeout=ctx.hard_deadline - time.monotonic())
        # The hard deadline: whatever still waits is cut off and shows as unanswered.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(v.close() for v in visitors), return_exceptions=True)
        families_base = await families_task
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    stored = await settle(db_url, max(ctx.hard_deadline, time.monotonic()) + 10)
    late = [t.client_id for t in ctx.tally.turns if t.timeouts]
    timings = await asyncio.to_thread(reply_timings, db_url, late)
    # Idle again: what stays allocated once the load is gone.
    await asyncio.to_thread(sampler.sample, "end", time.monotonic() - t0)
    families_end = await asyncio.to_thread(sampler.key_families)
    elapsed = time.monotonic() - t0
    sampler.redis.close()
    return SoakResult(
        ctx.tally, sampler.samples, stored, families_base, families_end, elapsed, timings
    )


async def _families_at(sampler: Sampler, when: float) -> Counter:
    await asyncio.sleep(max(0.0, when - time.monotonic()))
    return await asyncio.to_thread(sampler.key_families)


def scan_logs(result: SoakResult, children: list[stack.Child]) -> None:
    for child in children:
        text = child.log()
        if not child.alive():
            result.log_problems.append(f"{child.name} died")
        for line in text.splitlines():
            if LOG_PROBLEMS.search(line):
                result.log_problems.append(f"{child.name}: {line.strip()[:200]}")
            elif "WARNING" in line:
                # Ids and numbers blurred, so that one kind of warning counts as one.
                blurred = re.sub(r"[0-9a-f-]{8,}|\d+", "#", line.strip())[:120]
                result.log_warnings[f"{child.name}: {blurred}"] += 1


# --- Reporting --------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> str:
    value = percentile(values, q)
    return "-" if math.isnan(value) else f"{value * 1000:.0f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def traffic_table(tally: Tally, minutes: int) -> list[str]:
    head = (
        f"{'minute':>6} {'sent':>5} {'done':>5} {'failed':>6} {'reconn':>6} {'abandon':>7} "
        f"{'new conv':>8} {'TTFT p50':>8} {'p99':>6} {'reply p50':>9} {'p99':>6}  errors by code"
    )
    lines = [head, "-" * len(head)]
    total = Minute()
    for index in range(1, minutes + 2):
        m = tally.by_minute.get(index, Minute())
        label = str(index) if index <= minutes else "drain"
        lines.append(_traffic_row(label, m))
        total.sent += m.sent
        total.completed += m.completed
        total.failed += m.failed
        total.reconnects += m.reconnects
        total.abandoned += m.abandoned
        total.new_conversations += m.new_conversations
        total.errors.update(m.errors)
        total.ttft += m.ttft
        total.full += m.full
    lines.append(_traffic_row("all", total))
    return lines


def _traffic_row(label: str, m: Minute) -> str:
    errors = " ".join(f"{code}:{n}" for code, n in sorted(m.errors.items())) or "-"
    return (
        f"{label:>6} {m.sent:>5} {m.completed:>5} {m.failed:>6} {m.reconnects:>6} "
        f"{m.abandoned:>7} {m.new_conversations:>8} {_ms(m.ttft, 50):>8} {_ms(m.ttft, 99):>6} "
        f"{_ms(m.full, 50):>9} {_ms(m.full, 99):>6}  {errors}"
    )


def resource_table(samples: list[ResourceSample], redis_db: int) -> list[str]:
    names = list(samples[0].rss_kib) if samples else []
    rss_heads = " ".join(f"{n + ' MiB':>11}" for n in names)
    head = (
        f"{'at min':>6} {rss_heads} {f'redis db{redis_db}':>9} {'all':>4} {'used MiB':>8} "
        f"{'keys':>6} {'pg conns':>8} {'fds asgi':>8} {'worker':>6} {'busy':>5} {'ours':>5}"
    )
    lines = [head, "-" * len(head)]
    for s in samples:
        rss = " ".join(f"{_mib(s.rss_kib[n]):>11}" for n in names)
        workers = sum(v for k, v in s.fds.items() if k.startswith("worker"))
        at = s.mark
        lines.append(
            f"{at:>6} {rss} {s.redis_clients_db:>9} {s.redis_clients_all:>4} "
            f"{s.redis_used_memory / 2**20:>8.1f} {s.redis_keys:>6} {s.pg_backends:>8} "
            f"{s.fds.get('asgi', 0):>8} {workers:>6} {_share(s.machine_busy):>5} "
            f"{_share(s.own_busy):>5}"
        )
    return lines


def sockets_table(samples: list[ResourceSample]) -> list[str]:
    names = [n for n in (samples[0].rss_kib if samples else {}) if n not in ("model", "client")]
    head = f"{'at min':>6} " + " ".join(f"{n + ' redis/pg':>16}" for n in names)
    lines = [head]
    for s in samples:
        at = s.mark
        cells = " ".join(f"{f'{s.redis_sockets[n]}/{s.pg_sockets[n]}':>16}" for n in names)
        lines.append(f"{at:>6} {cells}")
    return lines


def growth_checks(samples: list[ResourceSample], minutes: int) -> list[tuple[str, bool | None]]:
    """(label, ok) per growth check; ok None when the run was too short to judge."""
    by_mark = {s.mark: s for s in samples}
    base, last = by_mark.get(str(GROWTH_BASE_MARK)), by_mark.get(str(minutes))
    if minutes <= GROWTH_BASE_MARK or base is None or last is None:
        return [(f"growth checks need more than {GROWTH_BASE_MARK} minutes", None)]
    checks: list[tuple[str, bool | None]] = []
    for name in base.rss_kib:
        if name in ("model", "client"):
            continue  # the stand-in and the harness are not the product
        b, e = base.rss_kib[name], last.rss_kib[name]
        checks.append(
            (
                f"{name} RSS {_mib(e)} MiB at minute {minutes} <= {RSS_FACTOR} x "
                f"{_mib(b)} MiB at minute {GROWTH_BASE_MARK}",
                e <= RSS_FACTOR * b,
            )
        )
    for label, b, e in (
        ("Redis clients on the benchmark's database", base.redis_clients_db, last.redis_clients_db),
        ("PostgreSQL connections to the benchmark's database", base.pg_backends, last.pg_backends),
    ):
        bound = CONNECTIONS_FACTOR * b + CONNECTIONS_SLACK
        checks.append(
            (
                f"{label}: {e} at minute {minutes} <= {CONNECTIONS_FACTOR} x {b} at minute "
                f"{GROWTH_BASE_MARK} + {CONNECTIONS_SLACK}",
                e <= bound,
            )
        )
    return checks


def answer_checks(result: SoakResult) -> tuple[list[str], list[tuple[str, bool]]]:
    turns = result.tally.turns
    stored = result.stored
    acked = [t for t in turns if t.acked]
    followed = [t for t in acked if not t.abandoned and not t.given_up]
    seen = [t for t in followed if t.outcome is not None]
    via_resume = [t for t in seen if t.interrupted]
    unseen = [t for t in followed if t.outcome is None]
    walked = [t for t in acked if t.abandoned or t.given_up]
    walked_answered = [t for t in walked if stored.by_client_id.get(t.client_id) in FINAL_STATUSES]
    not_stored = [t for t in acked if t.client_id not in stored.by_client_id]
    unacked = [t for t in turns if not t.acked]
    unacked_stored = [t for t in unacked if t.client_id in stored.by_client_id]
    duplicates = result.tally.anomalies["second final for a reply"]
    streaming = stored.reply_status.get("streaming", 0)
    info = [
        f"messages sent {len(turns)}, acknowledged {len(acked)} (never acknowledged: "
        f"{len(unacked)}, of them stored {len(unacked_stored)})",
        f"followed to the end {len(followed)}: got their final {len(seen)} "
        f"(after a resume: {len(via_resume)}), none: {len(unseen)}; "
        f"walked away or gave up {len(walked)}: answered in the database {len(walked_answered)}",
        f"database: {stored.visitor_rows} visitor messages, replies "
        + ", ".join(f"{k} {v}" for k, v in sorted(stored.reply_status.items()))
        + f"; without a reply: {stored.unanswered} (bot), "
        f"{stored.unanswered_elsewhere} (handed off)",
    ]
    ok = (
        not unseen
        and duplicates == 0
        and not not_stored
        and len(walked_answered) == len(walked)
        and stored.unanswered == 0
        and streaming == 0
    )
    label = (
        "every acknowledged message got exactly one final reply "
        f"({len(unseen)} without, {duplicates} twice, {len(walked) - len(walked_answered)} "
        f"walked-away unanswered, {streaming} still streaming, {stored.unanswered} stored "
        "unanswered)"
    )
    return info, [(label, ok)]


def timeout_report(result: SoakResult) -> list[str]:
    """Each reply the visitor waited --timeout for: what it had seen, and when the
    database says the reply was written (seconds from the send)."""
    lines = []
    for turn in (t for t in result.tally.turns if t.timeouts):
        v_at, r_at, done_at, status = result.timings.get(turn.client_id, (None,) * 4)

        def since(epoch: float | None, sent: float = turn.wall_send) -> str:
            return "never" if epoch is None else f"+{epoch - sent:.1f} s"

        got = (
            f"{turn.outcome} via {turn.final_via} at +{turn.t_final - turn.t_send:.1f} s"
            if turn.t_final is not None
            else "no final"
        )
        lines.append(
            f"timed out {turn.client_id}: at {'; '.join(turn.timeout_notes)}; database: "
            f"visitor row {since(v_at)}, reply row {since(r_at)}, reply {status} {since(done_at)}"
            f"; the visitor got {got}"
        )
    return lines


def slopes(samples: list[ResourceSample], minutes: int) -> list[str]:
    """RSS trend from the growth baseline to the last minute (least squares, MiB/min)."""
    marks = [s for s in samples if s.mark.isdigit() and GROWTH_BASE_MARK <= int(s.mark)]
    if len(marks) < 3:
        return []
    xs = [s.t / 60 for s in marks]
    mean_x = sum(xs) / len(xs)
    cells = []
    for name in marks[0].rss_kib:
        ys = [s.rss_kib[name] / 1024 for s in marks]
        mean_y = sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        cells.append(f"{name} {slope:+.2f}")
    return [
        f"RSS trend, minutes {GROWTH_BASE_MARK}-{minutes} (least squares, MiB/min): "
        + ", ".join(cells)
    ]


def render(result: SoakResult, args: argparse.Namespace, redis_db: int) -> tuple[str, bool]:
    lines: list[str] = []
    tally = result.tally
    lines.append(
        "traffic per minute (by the minute it happened; times in ms from the send; "
        "replies interrupted by a reconnect are not timed)"
    )
    lines += traffic_table(tally, args.minutes)
    lines.append("")
    lines.append(
        "resources at each minute mark (RSS: resident memory of the process tree; redis: "
        f"clients on db {redis_db} / all clients of the server (INFO clients), used_memory "
        "of the whole server, keys on our db; pg: backends on the benchmark database; "
        "fds: open descriptors; busy: share of both cores busy since the previous mark, whole "
        "machine / our processes (servers, model stand-in, harness); end: after the drain)"
    )
    lines += resource_table(result.samples, redis_db)
    lines.append("")
    lines.append("sockets per process to Redis / PostgreSQL (from /proc)")
    lines += sockets_table(result.samples)
    lines.append("")
    top = ", ".join(f"{k} {v}" for k, v in result.families_end.most_common(8)) or "none"
    lines.append(f"Redis keys on db {redis_db} at the end, by name: {top}")
    if result.families_base:
        base = ", ".join(f"{k} {v}" for k, v in result.families_base.most_common(8))
        lines.append(f"  at minute {min(GROWTH_BASE_MARK, args.minutes)}: {base}")
    if tally.anomalies:
        lines.append(
            "protocol anomalies: "
            + ", ".join(f"{k} {v}" for k, v in sorted(tally.anomalies.items()))
        )
    else:
        lines.append("protocol anomalies: none (no repeated or skipped delta, no replay overlap)")
    if result.log_warnings:
        lines.append(f"server log warnings ({sum(result.log_warnings.values())}):")
        for text, n in result.log_warnings.most_common(5):
            lines.append(f"  {n} x {text}")
    for crash in tally.crashes[:5]:
        lines.append(f"client exception: {crash}")
    lines += timeout_report(result)
    lines += slopes(result.samples, args.minutes)
    info, answered = answer_checks(result)
    lines.append("")
    lines += info
    total = Minute()
    for m in tally.by_minute.values():
        total.failed += m.failed
        total.errors.update(m.errors)
    server_5xx = sum(
        n for code, n in total.errors.items() if re.fullmatch(r"(http|handshake)_5\d\d", code)
    )
    checks: list[tuple[str, bool | None]] = list(answered)
    checks.append(
        (
            f"no failed reply and no error event ({total.failed} failed, "
            f"{sum(total.errors.values())} errors)",
            total.failed == 0 and not total.errors,
        )
    )
    checks += growth_checks(result.samples, args.minutes)
    checks.append(
        (
            f"no server 5xx and no error or traceback in the server logs ({server_5xx} 5xx, "
            f"{len(result.log_problems)} log lines)",
            server_5xx == 0 and not result.log_problems,
        )
    )
    for problem in result.log_problems[:8]:
        lines.append(f"  log: {problem}")
    lines.append("")
    passed = True
    for label, ok in checks:
        verdict = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"{verdict}  {label}")
        passed = passed and ok is not False
    lines.append("")
    lines.append(
        f"run time: visitors and drain {result.elapsed / 60:.1f} min "
        f"({args.minutes} min sending, at most {args.drain:.0f} s drain)"
    )
    lines.append(f"overall: {'PASS' if passed else 'FAIL'}")
    return "\n".join(lines), passed


# --- The plot (a hand-made SVG: no plotting dependency) --------------------------------------

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f")


def _nice_step(span: float) -> float:
    raw = span / 4 if span > 0 else 1
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _panel(
    top: float,
    title: str,
    y_label: str,
    series: list[tuple[str, list[tuple[float, float]], str, bool]],
    x_max: float,
) -> list[str]:
    """One chart: series are (label, [(minute, value)], colour, dashed)."""
    left, width, height = 70.0, 520.0, 220.0
    values = [v for _, points, _, _ in series for _, v in points] or [1.0]
    step = _nice_step(max(values) * 1.1)
    y_max = step * math.ceil(max(values) * 1.1 / step) or step
    x_step = 1 if x_max <= 12 else 2

    def x(t: float) -> float:
        return left + width * t / x_max

    def y(v: float) -> float:
        return top + height - height * v / y_max

    out = [
        f'<text x="{left}" y="{top - 12}" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#888"/>',
    ]
    tick = 0.0
    while tick <= y_max + 1e-9:
        out.append(
            f'<line x1="{left}" x2="{left + width}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{tick:g}</text>'
        )
        tick += step
    minute = 0
    while minute <= x_max + 1e-9:
        out.append(
            f'<text x="{x(minute):.1f}" y="{top + height + 16}" font-size="11" '
            f'text-anchor="middle">{minute}</text>'
        )
        minute += x_step
    out.append(
        f'<text x="{left - 50}" y="{top + height / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 {left - 50} {top + height / 2})">{escape(y_label)}</text>'
    )
    for i, (label, points, colour, dashed) in enumerate(series):
        if not points:
            continue
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for t, v in points:
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
        ly = top + 14 + 18 * i
        out.append(
            f'<line x1="{left + width + 14}" x2="{left + width + 38}" y1="{ly - 4}" '
            f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{left + width + 44}" y="{ly}" font-size="11">{escape(label)}</text>')
    return out


def svg_plot(samples: list[ResourceSample], caption: str, redis_db: int) -> str:
    x_max = max(1.0, max((s.t / 60 for s in samples), default=1.0) + 0.2)
    # The harness's own memory is in the table; the plot is about the servers.
    names = [n for n in (samples[0].rss_kib if samples else {}) if n != "client"]
    memory = []
    for i, name in enumerate(names):
        points = [(s.t / 60, s.rss_kib[name] / 1024) for s in samples]
        label = {
            "asgi": "ASGI server (uvicorn)",
            "model": "model stand-in",
            "client": "benchmark client",
        }.get(name, f"Celery {name}")
        memory.append((label, points, COLOURS[i % len(COLOURS)], name in ("model", "client")))
    connections = [
        (
            f"Redis clients, db {redis_db} (ours)",
            [(s.t / 60, s.redis_clients_db) for s in samples],
            COLOURS[0],
            False,
        ),
        (
            "Redis clients, whole server",
            [(s.t / 60, s.redis_clients_all) for s in samples],
            COLOURS[6],
            True,
        ),
        (
            "PostgreSQL backends (bench db)",
            [(s.t / 60, s.pg_backends) for s in samples],
            COLOURS[2],
            False,
        ),
    ]
    width, height = 800, 640
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="24" font-size="13">{escape(caption)}</text>',
    ]
    body += _panel(70, "Resident memory per process (process tree)", "MiB", memory, x_max)
    body += _panel(370, "Connections", "connections", connections, x_max)
    body.append(
        f'<text x="{70 + 260}" y="{370 + 220 + 36}" font-size="12" text-anchor="middle">'
        "minutes since the visitors started (last point: after the drain, idle)</text>"
    )
    body.append("</svg>")
    return "\n".join(body) + "\n"


# --- Main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=int, default=10, help="sending time, 1 to 10")
    parser.add_argument("--visitors", type=int, default=200)
    parser.add_argument(
        "--churn", type=float, default=0.2, metavar="P",
        help="share of turns that end in churn: P/2 disconnect and resume, P/4 abandon the "
        "reply mid-stream (half resume it, half walk away), P/4 start a new conversation",
    )  # fmt: skip
    parser.add_argument(
        "--think", default="2,8", metavar="MIN,MAX", help="seconds between a reply and the next"
    )
    parser.add_argument("--drain", type=float, default=45.0, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per reply")
    parser.add_argument("--reply-words", type=int, default=40)
    parser.add_argument("--first-token-delay", type=float, default=0.2, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--concurrency-worker", type=int, default=256,
        help="Celery worker --concurrency and REPLY_CONCURRENCY (raised to --visitors)",
    )  # fmt: skip
    # The Redis database's clients and keys are counted as the stack's: keep it to this run.
    add_stack_arguments(parser, redis_db=12, set_example="DB_POOL_MAX_SIZE=10")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "soak.svg"), metavar="SVG")
    args = parser.parse_args(argv)
    if not 1 <= args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be 1 to {MAX_MINUTES}: a soak run is bounded")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    concurrency = max(args.concurrency_worker, args.visitors)
    db_name = f"supportbot_soak_{os.getpid()}"
    redis_db = int(urlsplit(args.redis_url).path.strip("/") or 0)
    started = datetime.datetime.now(datetime.UTC)
    children: list = []
    with stack.log_dir() as logs, bench_database(args.database_url, db_name) as db_url:
        with children_stopped(children, logs, args.keep_logs):
            product = start_product(args, logs, db_url, children, concurrency=concurrency)
            background = background_load()
            header = (
                header_line(args, started, background, concurrency, title="soak")
                + f"; {args.visitors} visitors for {args.minutes} min, churn {args.churn:g}, "
                f"think {args.think.replace(',', '-')} s, drain {args.drain:g} s"
            )
            print(header, flush=True)
            result = run_loop(soak(args, product, db_url, db_name))
            scan_logs(result, [product.asgi, *product.workers])
    table, passed = render(result, args, redis_db)
    print(table)
    if args.plot:
        caption = (
            f"soak {started:%Y-%m-%d %H:%M} UTC: {args.visitors} visitors, "
            f"{args.minutes} min, churn {args.churn:g}, {os.cpu_count()} cores"
        )
        Path(args.plot).write_text(svg_plot(result.samples, caption, redis_db))
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
