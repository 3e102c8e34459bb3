"""Streaming latency of the product against a minimal direct relay, in one run.

    python -m benchmarks.run [--n 1,50,200] [--reply-words 100] [--first-token-delay 0.2]
                             [--tokens-per-second 50] [--concurrency-worker 256]

Starts, on loopback only: the scripted model server (tests/scripted_llm.py), a
PostgreSQL database of its own on the server at DATABASE_URL (migrated, dropped
at the end), the real uvicorn + Celery worker (tests/stack.py), and the baseline
(benchmarks/direct_relay.py). For each N, N websocket visitors on one asyncio
loop say hello, wait at a barrier, send one message each at the same moment and
time the reply; the same load then goes through the direct relay. It prints the
added time to first token over the model's own, the end-to-end ratio to the
baseline, frames per reply, lost or duplicated deltas and whether the stored
text equals the model's, and PASS/FAIL against the targets (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from websockets.asyncio.client import ClientConnection, connect

from supportbot.local import process
from tests import stack
from tests.scripted_llm import default_reply_tokens
from tests.visitor import ORIGIN

ROOT = Path(__file__).resolve().parent.parent

# Targets at N = 200 (from the issue).
TARGET_N = 200
TARGET_ADDED_TTFT_P50 = 0.030
TARGET_ADDED_TTFT_P99 = 0.150
TARGET_E2E_RATIO = 1.15

# Limits that must not shape a load test: it measures streaming, not rate limiting.
BENCH_SERVER_SETTINGS = {
    "RATE_VISITOR_MESSAGES_PER_MINUTE": "1000000",
    "RATE_ADDRESS_MESSAGES_PER_MINUTE": "1000000",
    "RATE_CONVERSATIONS_PER_HOUR": "1000000",
    # 0: no per-site limit. The benchmark measures the stack, not the limits.
    "RATE_SITE_MESSAGES_PER_MINUTE": "0",
    "RATE_SITE_CONVERSATIONS_PER_HOUR": "0",
    "RATE_SITE_CONCURRENT_REPLIES": "0",
    "RATE_SITE_TOKENS_PER_DAY": "0",
    "LOG_LEVEL": "WARNING",
}

SETUP_PARALLELISM = 25  # conversations created / sockets opened at once (untimed)

QUESTION = "Hello, where is my order?"  # every visitor's one message


# --- Measurements -----------------------------------------------------------------


@dataclass
class Sample:
    """One visitor's one reply, as the client saw it."""

    t_send: float = 0.0  # perf_counter
    wall_send: float = 0.0  # time.time(), to line up with server-side timestamps
    t_first: float | None = None
    wall_first: float | None = None
    t_done: float | None = None
    frames: int = 0  # every frame from the send up to and including `done`
    delta_frames: int = 0
    indexes: list[int] = field(default_factory=list)
    assembled: str = ""
    done_text: str | None = None
    reply_id: str | None = None
    client_id: str = ""
    error: str | None = None

    @property
    def lost(self) -> int:
        if not self.indexes:
            return 0
        return len(set(range(max(self.indexes) + 1)) - set(self.indexes))

    @property
    def duplicated(self) -> int:
        return len(self.indexes) - len(set(self.indexes))


@dataclass
class Round:
    samples: list[Sample]
    stored: dict[str, dict] = field(default_factory=dict)  # reply id -> row (product only)
    visitor_rows: dict[str, dict] = field(default_factory=dict)  # client_id -> row
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far (from /proc/stat)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_used(into: dict[str, float], pids: dict[str, int]) -> Iterator[None]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before["machine"] = machine_busy_seconds()
    before["wall"] = time.monotonic()
    yield
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    after["machine"] = machine_busy_seconds()
    after["wall"] = time.monotonic()
    for name, value in after.items():
        into[name] = into.get(name, 0.0) + value - before[name]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# --- The client: N visitors on one loop --------------------------------------------


async def open_visitor_socket(
    url: str, origin: str | None, token: str | None, last_seq: int = 0
) -> tuple[ClientConnection, dict]:
    """Connect and say hello; the socket and the `ready` event. The resume replay (for
    last_seq > 0, or a reply still streaming) is left unread on the socket."""
    ws = await connect(url, origin=origin, max_size=None, open_timeout=30, ping_interval=None)
    try:
        await ws.send(json.dumps({"type": "hello", "token": token, "last_seq": last_seq}))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event["type"] == "ready":
                return ws, event
            if event["type"] == "error":
                raise RuntimeError(f"hello refused: {event}")
    except BaseException:
        await ws.close()
        raise


async def _open(url: str, origin: str | None, token: str | None) -> ClientConnection:
    ws, _ready = await open_visitor_socket(url, origin, token)
    return ws


async def _converse(ws: ClientConnection, go: asyncio.Event, sample: Sample, timeout: float):
    await go.wait()
    sample.client_id = str(uuid.uuid4())
    frame = json.dumps({"type": "message", "text": QUESTION, "client_id": sample.client_id})
    sample.wall_send = time.time()
    sample.t_send = time.perf_counter()
    await ws.send(frame)
    deadline = sample.t_send + timeout
    try:
        while True:
            raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.perf_counter()))
            now = time.perf_counter()
            sample.frames += 1
            event = json.loads(raw)
            kind = event.get("type")
            if kind == "delta":
                if sample.reply_id is None:
                    sample.reply_id = event["message_id"]
                if event["message_id"] != sample.reply_id:
                    continue
                if sample.t_first is None:
                    sample.t_first = now
                    sample.wall_first = time.time()
                sample.delta_frames += 1
                sample.indexes.append(event["index"])
                sample.assembled += event["text"]
            elif kind == "message" and event["message"].get("role") == "assistant":
                sample.reply_id = sample.reply_id or event["message"]["id"]
            elif kind == "done" and event["message"].get("role") == "assistant":
                sample.t_done = now
                sample.done_text = event["message"]["text"]
                sample.reply_id = sample.reply_id or event["message"]["id"]
                if event["message"].get("status") != "complete":
                    sample.error = f"reply {event['message'].get('status')}"
                return
            elif kind == "error":
                sample.error = f"error frame {event.get('code')}: {event.get('detail')}"
    except TimeoutError:
        sample.error = f"no done within {timeout:.0f}s"
    except Exception as exc:  # a broken socket is a result, not a crash of the harness
        sample.error = f"{type(exc).__name__}: {exc}"


async def _gather_limited(factories, limit: int):
    semaphore = asyncio.Semaphore(limit)

    async def one(factory):
        async with semaphore:
            return await factory()

    return await asyncio.gather(*(one(f) for f in factories))


async def run_round(
    targets: list[tuple[str, str | None, str | None]], timeout: float, pids: dict[str, int]
) -> Round:
    """targets: (websocket url, origin, visitor token) per visitor."""
    sockets = await _gather_limited([lambda t=t: _open(*t) for t in targets], SETUP_PARALLELISM)
    go = asyncio.Event()
    samples = [Sample() for _ in sockets]
    tasks = [
        asyncio.create_task(_converse(ws, go, sample, timeout))
        for ws, sample in zip(sockets, samples, strict=True)
    ]
    await asyncio.sleep(0.2)  # every task is parked at the barrier
    result = Round(samples)
    with cpu_used(result.cpu, {**pids, "client": os.getpid()}):
        go.set()
        await asyncio.gather(*tasks)
    await asyncio.sleep(0.2)  # let trailing frames (typing off) arrive before closing
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return result


class ConversationRefused(RuntimeError):
    """POST /api/v1/conversations answered something other than 201."""

    def __init__(self, status: int, body: str):
        super().__init__(f"conversation create: {status} {body}")
        self.status = status


async def create_conversation(
    client: httpx.AsyncClient, http_url: str, site_key: str, visitor_token: str | None = None
) -> dict:
    """A new conversation (the 201 body); with visitor_token, for that same visitor."""
    body = {"site_key": site_key}
    if visitor_token:
        body["visitor_token"] = visitor_token
    response = await client.post(f"{http_url}/api/v1/conversations", json=body)
    if response.status_code != 201:
        raise ConversationRefused(response.status_code, response.text)
    return response.json()


async def product_round(
    n: int, http_url: str, ws_url: str, site_key: str, timeout: float, pids: dict[str, int]
) -> Round:
    async with httpx.AsyncClient(
        headers={"Origin": ORIGIN}, timeout=30, limits=httpx.Limits(max_connections=50)
    ) as client:

        async def start() -> dict:
            return await create_conversation(client, http_url, site_key)

        created = await _gather_limited([start] * n, SETUP_PARALLELISM)
    targets = [(ws_url + c["websocket_url"], ORIGIN, c["visitor_token"]) for c in created]
    return await run_round(targets, timeout, pids)


async def baseline_round(n: int, relay_url: str, timeout: float, pids: dict[str, int]) -> Round:
    return await run_round([(relay_url, None, None)] * n, timeout, pids)


def load_stored(db_url: str, result: Round) -> None:
    reply_ids = [int(s.reply_id) for s in result.samples if s.reply_id and s.reply_id.isdigit()]
    client_ids = [s.client_id for s in result.samples]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for row in conn.execute(
            "SELECT id, text, status, extract(epoch FROM created_at), "
            "time_to_first_token_ms, total_time_ms, extract(epoch FROM completed_at), "
            "moderation FROM conversations_message WHERE id = ANY(%s)",
            [reply_ids],
        ):
            result.stored[str(row[0])] = {
                "text": row[1],
                "status": row[2],
                "created": float(row[3]),
                "ttft_ms": row[4],
                "total_ms": row[5],
                "completed": float(row[6]) if row[6] is not None else None,
                "moderation": row[7],
            }
        for row in conn.execute(
            "SELECT client_id, extract(epoch FROM created_at), moderation "
            "FROM conversations_message WHERE client_id = ANY(%s)",
            [client_ids],
        ):
            result.visitor_rows[row[0]] = {"created": float(row[1]), "moderation": row[2]}


# --- Reporting ----------------------------------------------------------------------


@dataclass
class Summary:
    n: int
    samples: int
    failed: int
    added_ttft_p50: float
    added_ttft_p99: float
    e2e_p50: float
    e2e_p99: float
    frames_per_reply: float
    deltas_per_reply: float
    lost: int
    duplicated: int
    text_ok: int  # assembled == done == model text
    stored_ok: int | None  # stored == model text (product only)
    cpu: dict[str, float]  # CPU seconds per process (and "machine", "wall") over all rounds


def summarize(n: int, rounds: list[Round], expected: str, ttft: float, stored: bool) -> Summary:
    samples = [s for r in rounds for s in r.samples]
    cpu: dict[str, float] = {}
    for r in rounds:
        for name, value in r.cpu.items():
            name = "worker" if name.startswith("worker") else name  # all worker processes
            cpu[name] = cpu.get(name, 0.0) + value
    good = [s for s in samples if s.error is None and s.t_first and s.t_done]
    added = [s.t_first - s.t_send - ttft for s in good]
    e2e = [s.t_done - s.t_send for s in good]
    stored_ok = None
    if stored:
        rows = {k: v for r in rounds for k, v in r.stored.items()}
        stored_ok = sum(
            1
            for s in samples
            if s.reply_id in rows
            and rows[s.reply_id]["text"] == expected
            and rows[s.reply_id]["status"] == "complete"
        )
    return Summary(
        n=n,
        samples=len(samples),
        failed=len(samples) - len(good),
        added_ttft_p50=percentile(added, 50),
        added_ttft_p99=percentile(added, 99),
        e2e_p50=percentile(e2e, 50),
        e2e_p99=percentile(e2e, 99),
        frames_per_reply=sum(s.frames for s in good) / len(good) if good else math.nan,
        deltas_per_reply=sum(s.delta_frames for s in good) / len(good) if good else math.nan,
        lost=sum(s.lost for s in samples),
        duplicated=sum(s.duplicated for s in samples),
        text_ok=sum(1 for s in samples if s.assembled == expected and s.done_text == expected),
        stored_ok=stored_ok,
        cpu=cpu,
    )


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.1f}"


def breakdown(rounds: list[Round], ttft: float) -> list[tuple[str, list[float]]]:
    """Where a product reply's first token spends its time, from server timestamps.

    Every clock here is the same machine's wall clock (time.time() in the client,
    timezone.now() in the servers), so differences are meaningful to a millisecond.
    """
    stages: dict[str, list[float]] = {
        "send -> visitor row saved (consumer)": [],
        "visitor row -> reply row saved (commit, enqueue, pickup, reply_start)": [],
        "reply row -> first delta at client, less model TTFT": [],
        "  model TTFT seen by the worker, less the model's own": [],
        "total added TTFT": [],
    }
    keys = list(stages)
    for r in rounds:
        for s in r.samples:
            row = r.stored.get(s.reply_id or "")
            visitor = r.visitor_rows.get(s.client_id)
            if not row or not visitor or s.wall_first is None or row["ttft_ms"] is None:
                continue
            stages[keys[0]].append(visitor["created"] - s.wall_send)
            stages[keys[1]].append(row["created"] - visitor["created"])
            stages[keys[2]].append(s.wall_first - row["created"] - row["ttft_ms"] / 1000)
            stages[keys[3]].append(row["ttft_ms"] / 1000 - ttft)
            stages[keys[4]].append(s.wall_first - s.wall_send - ttft)
    return list(stages.items())


def render(
    summaries: list[tuple[Summary, Summary]], args: argparse.Namespace, breakdowns
) -> tuple[str, bool]:
    lines: list[str] = []
    header = (
        f"{'N':>4} {'side':<9} {'ok':>7} {'added TTFT p50':>14} {'p99':>8} "
        f"{'e2e p50':>8} {'p99':>8} {'ratio p50':>9} {'p99':>6} "
        f"{'frames':>7} {'deltas':>7} {'lost':>5} {'dup':>4} {'text=model':>10} "
        f"{'stored=model':>12}"
    )
    lines.append(
        "times in ms; added TTFT = client's first delta - send - model's first-token delay"
    )
    lines.append(header)
    lines.append("-" * len(header))
    passed = True
    for product, base in summaries:
        ratio50 = product.e2e_p50 / base.e2e_p50 if base.e2e_p50 else math.nan
        ratio99 = product.e2e_p99 / base.e2e_p99 if base.e2e_p99 else math.nan
        for side, s, r50, r99 in (
            ("product", product, f"{ratio50:.3f}", f"{ratio99:.3f}"),
            ("baseline", base, "1", "1"),
        ):
            text_pct = 100 * s.text_ok / s.samples if s.samples else 0
            stored = "n/a" if s.stored_ok is None else f"{100 * s.stored_ok / s.samples:.1f}%"
            lines.append(
                f"{s.n:>4} {side:<9} {s.samples - s.failed:>3}/{s.samples:<3} "
                f"{ms(s.added_ttft_p50):>14} {ms(s.added_ttft_p99):>8} "
                f"{ms(s.e2e_p50):>8} {ms(s.e2e_p99):>8} {r50:>9} {r99:>6} "
                f"{s.frames_per_reply:>7.1f} {s.deltas_per_reply:>7.1f} {s.lost:>5} "
                f"{s.duplicated:>4} {text_pct:>9.1f}% {stored:>12}"
            )
        # Correctness holds at every N; latency targets apply at N = 200.
        correct = (
            product.failed == 0
            and product.lost == 0
            and product.duplicated == 0
            and product.text_ok == product.samples
            and product.stored_ok == product.samples
        )
        checks = [("no failed replies, 0 lost/duplicated deltas, 100% text", correct)]
        if product.n == TARGET_N:
            checks += [
                (
                    f"added TTFT p50 {ms(product.added_ttft_p50)} "
                    f"<= {TARGET_ADDED_TTFT_P50 * 1000:.0f} ms",
                    product.added_ttft_p50 <= TARGET_ADDED_TTFT_P50,
                ),
                (
                    f"added TTFT p99 {ms(product.added_ttft_p99)} "
                    f"<= {TARGET_ADDED_TTFT_P99 * 1000:.0f} ms",
                    product.added_ttft_p99 <= TARGET_ADDED_TTFT_P99,
                ),
                (f"e2e ratio p50 {ratio50:.3f} <= {TARGET_E2E_RATIO}", ratio50 <= TARGET_E2E_RATIO),
            ]
        for label, ok in checks:
            lines.append(f"     N={product.n}: {'PASS' if ok else 'FAIL'}  {label}")
            passed = passed and ok
    if TARGET_N not in [p.n for p, _ in summaries]:
        lines.append(f"     (latency targets apply at N={TARGET_N}; this run did not include it)")
    lines.append("")
    lines.append(
        "CPU during the timed part, ms per reply (machine: every process, Redis, PostgreSQL "
        "and other users included; busy: share of all cores)"
    )
    names = ("asgi", "worker", "relay", "model", "client", "machine")
    lines.append(f"{'N':>4} {'side':<9} " + " ".join(f"{n:>8}" for n in names) + f" {'busy':>6}")
    for product, base in summaries:
        sides = (("product", product, {"asgi", "worker"}), ("baseline", base, {"relay"}))
        for side, s, own in sides:
            cells = []
            for name in names:
                if name in ("asgi", "worker", "relay") and name not in own:
                    cells.append(f"{'-':>8}")
                else:
                    cells.append(f"{s.cpu.get(name, 0.0) * 1000 / max(1, s.samples):>8.1f}")
            wall = s.cpu.get("wall", 0.0)
            busy = s.cpu.get("machine", 0.0) / (wall * (os.cpu_count() or 1)) if wall else math.nan
            lines.append(f"{s.n:>4} {side:<9} " + " ".join(cells) + f" {busy * 100:>5.0f}%")
    for n, stages in breakdowns:
        lines.append("")
        lines.append(f"product first-token breakdown at N={n} (ms, from server timestamps):")
        lines.append(f"  {'stage':<72} {'p50':>7} {'p99':>7}")
        for name, values in stages:
            p50, p99 = ms(percentile(values, 50)), ms(percentile(values, 99))
            lines.append(f"  {name:<72} {p50:>7} {p99:>7}")
    lines.append("")
    lines.append(f"overall: {'PASS' if passed else 'FAIL'}")
    return "\n".join(lines), passed


# --- Processes and the database ------------------------------------------------------


class LineChild:
    """A child that prints `ready URL` once it listens."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True,
            preexec_fn=process.die_with_parent,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"{name} did not start: {line!r}\n{self.log_path.read_text()}")
        self.url = line.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()
        self._log.close()


def with_database(url: str, name: str) -> str:
    """The same PostgreSQL server's URL, naming database `name`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def bench_database(server_url: str, name: str) -> Iterator[str]:
    admin_url = with_database(server_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_model(args: argparse.Namespace, log_dir: Path, *extra: str) -> LineChild:
    """The scripted model server, paced by --first-token-delay and --tokens-per-second."""
    return LineChild(
        "scripted-llm",
        [
            sys.executable, "-m", "tests.scripted_llm", "--port", "0",
            "--first-token-delay", str(args.first_token_delay),
            "--tokens-per-second", str(args.tokens_per_second),
            "--reply-words", str(args.reply_words), *extra,
        ],
        dict(os.environ),
        log_dir,
    )  # fmt: skip


@dataclass
class ProductStack:
    """The product's processes on a benchmark database (see start_product)."""

    llm: LineChild
    env: dict[str, str]
    site_key: str
    workers: list[stack.CeleryWorker]
    asgi: stack.AsgiServer


def start_product(
    args: argparse.Namespace,
    log_dir: Path,
    db_url: str,
    children: list,
    *,
    concurrency: int,
    worker_processes: int = 1,
    model_args: tuple[str, ...] = (),
) -> ProductStack:
    """The model stand-in, the migrated database with one site, the Celery worker(s)
    and uvicorn, configured from args (redis_url, set, and start_model's pacing).

    Each child goes into `children` as soon as it runs, so the caller's cleanup also
    stops what started before a later step failed.
    """
    llm = start_model(args, log_dir, *model_args)
    children.append(llm)
    extra = dict(item.split("=", 1) for item in args.set)
    env = stack.server_env(
        database=django_database(db_url),
        redis_url=args.redis_url,
        llm_base_url=llm.url,
        REPLY_CONCURRENCY=str(concurrency),
        **BENCH_SERVER_SETTINGS,
        **extra,
    )
    manage(env, "migrate", "--noinput")
    site_key = manage(env, "shell", "-c", CREATE_SITE).split("site_key", 1)[1].strip()
    per_process = math.ceil(concurrency / worker_processes)
    workers = []
    for _ in range(worker_processes):
        workers.append(stack.CeleryWorker(env, log_dir, concurrency=per_process))
        children.append(workers[-1])
    asgi = stack.AsgiServer(env, log_dir)
    children.append(asgi)
    return ProductStack(llm, env, site_key, workers, asgi)


def background_load(seconds: float = 3.0) -> float:
    """Share of all cores busy over `seconds` while the started stack idles.

    What the rest of the machine is doing (other users' tests, builds): a busy
    machine inflates every figure, mostly the product's.
    """
    busy_before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - busy_before) / (seconds * (os.cpu_count() or 1))


def header_line(
    args: argparse.Namespace,
    started: datetime.datetime,
    background: float,
    concurrency: int,
    title: str = "benchmark",
) -> str:
    return (
        f"{title} {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
        f"(background load before the run: {background * 100:.0f}% of them), "
        f"python {platform.python_version()}; model: first token "
        f"{args.first_token_delay * 1000:.0f} ms, {args.tokens_per_second:g} tokens/s, "
        f"{args.reply_words} tokens per reply; worker concurrency {concurrency}"
    )


def report_server_problems(workers: list[stack.CeleryWorker], asgi: stack.AsgiServer) -> None:
    """Dead servers and error lines in the workers' logs, on stderr."""
    for child in (*workers, asgi):
        if not child.alive():
            print(f"{child.name} died:\n{child.log()[-3000:]}", file=sys.stderr)
    tail = "".join(w.log()[-200_000:] for w in workers)
    problems = [
        line
        for line in tail.splitlines()
        if "ERROR" in line or "CRITICAL" in line or "Traceback" in line
    ]
    if problems:
        print(f"worker logged {len(problems)} error lines, e.g.:", file=sys.stderr)
        for line in problems[:5]:
            print("  " + line, file=sys.stderr)


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


# Mode "after": this harness measures the streaming path token by token (the
# moderation gate's own cost is benchmarks/moderation.py's subject). The offline
# moderator still checks every question and answer.
CREATE_SITE = f"""
from conversations.models import Site
site = Site.objects.create(
    name="Benchmark shop", allowed_origins=[{ORIGIN!r}],
    system_prompt="You are the Benchmark shop's support assistant.",
    temperature=0.2, max_tokens=512,
    moderation_mode="after", moderation_provider="offline",
)
print("site_key", site.public_key)
"""


# --- Main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", default="1,50,200", help="comma-separated visitor counts")
    parser.add_argument("--reply-words", type=int, default=100)
    parser.add_argument("--first-token-delay", type=float, default=0.2, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    parser.add_argument(
        "--concurrency-worker", type=int, default=256,
        help="Celery worker --concurrency and REPLY_CONCURRENCY (raised to the largest N)",
    )  # fmt: skip
    parser.add_argument(
        "--min-samples", type=int, default=10,
        help="repeat rounds of a small N until it has this many replies per side",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=-1,
        help="visitors in an untimed first round on each side (default: the largest N), so "
        "connection pools are as warm as in steady operation",
    )  # fmt: skip
    add_stack_arguments(parser, redis_db=14, set_example="DB_CONN_MAX_AGE=60")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per reply")
    parser.add_argument(
        "--worker-processes", type=int, default=1,
        help="Celery worker processes (the concurrency is split between them)",
    )  # fmt: skip
    parser.add_argument("--no-breakdown", action="store_true", help="skip the stage breakdown")
    parser.add_argument(
        "--py-spy", metavar="DIR",
        help="record py-spy profiles (collapsed stacks) of the ASGI server and the worker "
        "during the product rounds of the largest N into DIR (needs py-spy in the venv)",
    )  # fmt: skip
    return parser.parse_args(argv)


def add_stack_arguments(
    parser: argparse.ArgumentParser, *, redis_db: int, set_example: str
) -> None:
    """The options of every harness that starts a stack of its own."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/"),
        help="the PostgreSQL server; a database of the run's own is created there",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL")
        or os.environ.get("REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
        help="the Redis database the stack uses; keep it to this run",
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the servers' logs into DIR")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help=f"extra server environment (e.g. --set {set_example})",
    )  # fmt: skip


@contextlib.contextmanager
def children_stopped(children: list, logs: Path, keep_logs: str | None) -> Iterator[None]:
    """Stops every child process started in the block (last first), whatever happens,
    and keeps a copy of their logs when asked to."""
    try:
        yield
    finally:
        for child in reversed(children):
            with contextlib.suppress(Exception):
                child.stop()
        if keep_logs:
            shutil.copytree(logs, keep_logs, dirs_exist_ok=True)


@contextlib.contextmanager
def profiled(out_dir: str | None, n: int, pids: dict[str, int]) -> Iterator[None]:
    if not out_dir:
        yield
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--threads",
                "--gil",  # only the thread holding the GIL: where Python time goes
                "-o",
                str(Path(out_dir) / f"{name}-n{n}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for name, pid in pids.items()
    ]
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)


async def measure(args, ns, http_url, ws_url, relay_url, site_key, db_url, expected, pids):
    ttft = args.first_token_delay
    warmup = max(ns) if args.warmup < 0 else args.warmup
    if warmup:
        # Opens pools (database, Redis, HTTP to the model) on both sides; not counted.
        await product_round(warmup, http_url, ws_url, site_key, args.timeout, pids)
        await baseline_round(warmup, relay_url, args.timeout, pids)
        await asyncio.sleep(1.0)
    summaries = []
    breakdowns = []
    for n in ns:
        rounds = max(1, math.ceil(args.min_samples / n))
        product: list[Round] = []
        base: list[Round] = []
        for i in range(rounds):
            # Alternate which side goes first, so neither always runs on a cooler machine.
            order = ("product", "baseline") if i % 2 == 0 else ("baseline", "product")
            for side in order:
                if side == "product":
                    servers = {k: pids[k] for k in ("asgi", "worker")}
                    with profiled(args.py_spy if n == max(ns) else None, n, servers):
                        result = await product_round(
                            n, http_url, ws_url, site_key, args.timeout, pids
                        )
                    load_stored(db_url, result)
                    product.append(result)
                else:
                    base.append(await baseline_round(n, relay_url, args.timeout, pids))
                await asyncio.sleep(0.5)
        errors = sorted({s.error for r in product + base for s in r.samples if s.error})
        for error in errors[:5]:
            print(f"  N={n}: {error}", file=sys.stderr)
        p = summarize(n, product, expected, ttft, stored=True)
        b = summarize(n, base, expected, ttft, stored=False)
        print(
            f"  N={n}: product added TTFT p50 {ms(p.added_ttft_p50)} ms "
            f"p99 {ms(p.added_ttft_p99)} ms, "
            f"e2e p50 {ms(p.e2e_p50)} ms vs baseline {ms(b.e2e_p50)} ms",
            file=sys.stderr,
            flush=True,
        )
        summaries.append((p, b))
        if not args.no_breakdown:
            breakdowns.append((n, breakdown(product, ttft)))
    return summaries, breakdowns


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ns = [int(part) for part in args.n.split(",") if part.strip()]
    concurrency = max(args.concurrency_worker, *ns)
    expected = "".join(default_reply_tokens(args.reply_words))
    db_name = f"supportbot_bench_{os.getpid()}"
    started = datetime.datetime.now(datetime.UTC)
    children: list = []
    with stack.log_dir() as logs, bench_database(args.database_url, db_name) as db_url:
        with children_stopped(children, logs, args.keep_logs):
            product = start_product(
                args, logs, db_url, children,
                concurrency=concurrency, worker_processes=args.worker_processes,
            )  # fmt: skip
            llm, workers, asgi = product.llm, product.workers, product.asgi
            site_key = product.site_key
            relay = LineChild(
                "direct-relay",
                [sys.executable, "-m", "benchmarks.direct_relay", "--model-url", llm.url],
                dict(os.environ),
                logs,
            )
            children.append(relay)
            background = background_load()
            print(header_line(args, started, background, concurrency), flush=True)
            summaries, breakdowns = run_loop(
                measure(
                    args,
                    ns,
                    asgi.url,
                    asgi.ws_url,
                    relay.url,
                    site_key,
                    db_url,
                    expected,
                    {
                        "asgi": asgi.process.pid,
                        **{f"worker{i or ''}": w.process.pid for i, w in enumerate(workers)},
                        "relay": relay.process.pid,
                        "model": llm.process.pid,
                    },
                )
            )
            report_server_problems(workers, asgi)
    table, passed = render(summaries, args, breakdowns)
    print(table)
    return 0 if passed else 1


def django_database(url: str) -> dict:
    from supportbot.env import database_from_url

    return database_from_url("DATABASE_URL", url)


def run_loop(coro):
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
