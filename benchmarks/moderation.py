"""What the moderation gate costs a streamed reply, against no moderation, in one run.

    python -m benchmarks.moderation [--n 1,50] [--reply-words 100] [--first-token-delay 0.2]
                                    [--tokens-per-second 50] [--min-samples 20]
                                    [--min-rounds 8]

Starts, on loopback only: one scripted model server (tests/scripted_llm.py) that
answers every request with ordinary support sentences, a PostgreSQL database of its
own on the server at DATABASE_URL, and two complete product stacks on that database
and one Redis (uvicorn + Celery worker each, each with its own Celery queue):

- "gate": default settings; its site uses moderation_mode="gate" with the offline
  moderator, so every answer is held back and released a sentence at a time, each
  sentence checked (with the text released before it) first;
- "none": MODERATION_ENABLED=false, the deployment-wide switch; its site is the same.

For each N, rounds alternate between the stacks (gate first on even rounds, none
first on odd ones); in a round N websocket visitors send one message each at the
same moment and time the reply (send -> `done`) and its first delta. It prints the
end-to-end p50 ratio gate/none and PASS/FAIL against the target (docs/benchmarks.md),
the correctness checks, and CPU per reply of each stack's processes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass

from benchmarks.run import (
    BENCH_SERVER_SETTINGS,
    QUESTION,
    Round,
    add_stack_arguments,
    background_load,
    bench_database,
    children_stopped,
    django_database,
    header_line,
    load_stored,
    manage,
    ms,
    percentile,
    product_round,
    profiled,
    report_server_problems,
    run_loop,
    start_model,
)
from tests import stack
from tests.scripted_llm import support_reply_tokens
from tests.visitor import ORIGIN

# The target (from the issue): gate e2e p50 over no-moderation e2e p50, at N = 50.
TARGET_N = 50
TARGET_RATIO = 1.05

GATE, NONE = "gate", "none"

# Two stacks are four pooled processes (two ASGI servers, two workers) on one PostgreSQL
# server, and at N = 50 each fills its pool: at the default 20 that is 80 connections,
# which with anything else on the server exceeds PostgreSQL's default max_connections
# (100) and fails replies. Both stacks get the same smaller pool (override with --set).
POOL_SETTINGS = {"DB_POOL_MAX_SIZE": "10"}

# Both sites are identical; only the "none" stack's deployment switch differs, so the
# comparison is moderation against no moderation and nothing else.
CREATE_SITE = f"""
from conversations.models import Site
site = Site.objects.create(
    name="Benchmark shop", allowed_origins=[{ORIGIN!r}],
    system_prompt="You are the Benchmark shop's support assistant.",
    temperature=0.2, max_tokens=512,
    moderation_mode=Site.ModerationMode.GATE,
    moderation_provider=Site.ModerationProvider.OFFLINE,
)
print("site_key", site.public_key)
"""

# Run in the gate stack's environment, before measuring: the model's answer goes
# through the same Gate, checker and leak detector a reply uses (replies.py), so a
# text the offline moderator would stop is caught here, not read as a slow reply.
# It also counts the gate's windows and times its CPU per reply (search and checks).
CHECK_TEXT = """
import asyncio, json, time
from django.conf import settings
from conversations.models import Site
from conversations.moderation import moderator_for
from conversations.moderation.gate import AnswerChecker, Gate
from conversations.moderation.leak import LeakDetector
from conversations.prompt import system_prompt_for

site = Site.objects.get(public_key=SITE_KEY)
moderator = moderator_for(site)
prompt = system_prompt_for(
    site_prompt=site.system_prompt, canary=site.prompt_canary,
    handoff_tool=settings.LLM_HANDOFF_TOOL,
)
leak = LeakDetector(system_prompt=prompt, canary=site.prompt_canary)

async def one_reply():
    question = await AnswerChecker(moderator).check(QUESTION)
    checker = AnswerChecker(moderator, leak)
    gate = Gate(
        checker, fail_open=site.moderation_fail_open,
        window_chars=settings.MODERATION_WINDOW_CHARS,
        context_chars=settings.MODERATION_CONTEXT_CHARS,
    )
    released = [await gate.feed(token) for token in TOKENS] + [await gate.finish()]
    final = await checker.check(gate.model_text)
    return question, gate, [r for r in released if r], final

async def main():
    question, gate, released, final = await one_reply()  # also loads the model
    started = time.process_time()
    for _ in range(REPEAT):
        await one_reply()
    cpu = (time.process_time() - started) / REPEAT
    return {
        "provider": moderator.name,
        "question": question.status,
        "stopped": None if gate.stopped is None else gate.stopped.code,
        "released": "".join(released),
        "windows": gate.checks,
        "window_chars": [len(r) for r in released],
        "final": final.status,
        "final_categories": list(final.categories),
        "cpu_ms": cpu * 1000,
        "context_chars": settings.MODERATION_CONTEXT_CHARS,
    }

print("result", json.dumps(asyncio.run(main())))
"""


@dataclass
class Stack:
    """One product stack: its servers, its site and the pids whose CPU is counted."""

    name: str
    asgi: stack.AsgiServer
    worker: stack.CeleryWorker
    site_key: str
    pids: dict[str, int]


@dataclass
class SideSummary:
    samples: int
    failed: int
    e2e: list[float]
    first: list[float]
    deltas_per_reply: float
    lost: int
    duplicated: int
    text_ok: int  # assembled deltas == `done` text == model text
    stored_ok: int  # stored reply complete, == model text, moderation as expected
    cpu: dict[str, float]  # CPU seconds per process (and "machine", "wall") over all rounds

    @property
    def correct(self) -> bool:
        return (
            self.failed == 0
            and self.lost == 0
            and self.duplicated == 0
            and self.text_ok == self.samples
            and self.stored_ok == self.samples
        )


def summarize_side(rounds: list[Round], expected: str, moderation: str) -> SideSummary:
    """`moderation`: the verdict both the question and the reply must be stored with."""
    samples = [s for r in rounds for s in r.samples]
    rows = {k: v for r in rounds for k, v in r.stored.items()}
    visitors = {k: v for r in rounds for k, v in r.visitor_rows.items()}
    good = [s for s in samples if s.error is None and s.t_first and s.t_done]
    cpu: dict[str, float] = {}
    for r in rounds:
        for name, value in r.cpu.items():
            cpu[name] = cpu.get(name, 0.0) + value
    stored_ok = 0
    for s in samples:
        row = rows.get(s.reply_id or "")
        visitor = visitors.get(s.client_id)
        stored_ok += bool(
            row
            and visitor
            and row["status"] == "complete"
            and row["text"] == expected
            and row["moderation"] == moderation
            and visitor["moderation"] == moderation
        )
    return SideSummary(
        samples=len(samples),
        failed=len(samples) - len(good),
        e2e=[s.t_done - s.t_send for s in good],
        first=[s.t_first - s.t_send for s in good],
        deltas_per_reply=sum(s.delta_frames for s in good) / len(good) if good else math.nan,
        lost=sum(s.lost for s in samples),
        duplicated=sum(s.duplicated for s in samples),
        text_ok=sum(1 for s in samples if s.assembled == expected and s.done_text == expected),
        stored_ok=stored_ok,
        cpu=cpu,
    )


@dataclass
class Result:
    n: int
    gate: SideSummary
    none: SideSummary
    round_ratios: list[float]  # p50 gate / p50 none of each pair of rounds

    @property
    def ratio(self) -> float:
        none = percentile(self.none.e2e, 50)
        return percentile(self.gate.e2e, 50) / none if none else math.nan


# --- Measuring ------------------------------------------------------------------------


async def one_round(side: Stack, n: int, args: argparse.Namespace, db_url: str) -> Round:
    result = await product_round(
        n, side.asgi.url, side.asgi.ws_url, side.site_key, args.timeout, side.pids
    )
    load_stored(db_url, result)
    return result


def _round_p50(result: Round) -> float:
    return percentile([s.t_done - s.t_send for s in result.samples if s.t_done], 50)


async def measure(
    args: argparse.Namespace,
    ns: list[int],
    stacks: dict[str, Stack],
    db_url: str,
    expected: str,
) -> list[Result]:
    warmup = max(ns) if args.warmup < 0 else args.warmup
    if warmup:
        # Opens pools (database, Redis, HTTP to the model) and loads the offline
        # moderator's model in the gate worker (seconds, once per process); not counted.
        for side in stacks.values():
            await one_round(side, warmup, args, db_url)
        await asyncio.sleep(1.0)
    results = []
    for n in ns:
        rounds = max(args.min_rounds, math.ceil(args.min_samples / n))
        done: dict[str, list[Round]] = {GATE: [], NONE: []}
        servers = {
            f"{name}-{proc}": pid
            for name, side in stacks.items()
            for proc, pid in side.pids.items()
            if proc != "model"
        }
        with profiled(args.py_spy if n == max(ns) else None, n, servers):
            for i in range(rounds):
                # Alternate which stack goes first, so neither always runs on a cooler machine.
                order = (GATE, NONE) if i % 2 == 0 else (NONE, GATE)
                for name in order:
                    done[name].append(await one_round(stacks[name], n, args, db_url))
                    await asyncio.sleep(0.5)
        errors = sorted({s.error for r in done[GATE] + done[NONE] for s in r.samples if s.error})
        for error in errors[:5]:
            print(f"  N={n}: {error}", file=sys.stderr)
        result = Result(
            n,
            summarize_side(done[GATE], expected, "passed"),
            # Proves the switch took effect: with moderation off, verdicts are "unchecked".
            summarize_side(done[NONE], expected, "unchecked"),
            [_round_p50(g) / _round_p50(b) for g, b in zip(done[GATE], done[NONE], strict=True)],
        )
        print(
            f"  N={n}: e2e p50 gate {ms(percentile(result.gate.e2e, 50))} ms, "
            f"none {ms(percentile(result.none.e2e, 50))} ms, ratio {result.ratio:.3f}",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    return results


# --- Reporting ------------------------------------------------------------------------


def render(results: list[Result], check: dict) -> tuple[str, bool]:
    lines = [
        "times in ms from the visitor's send; ratio = gate e2e p50 / none e2e p50; "
        "deltas = delta frames per reply (gate: one per released window)",
    ]
    header = (
        f"{'N':>4} {'side':<5} {'ok':>7} {'e2e p50':>8} {'p99':>8} {'ratio p50':>9} "
        f"{'1st delta p50':>13} {'p99':>8} {'deltas':>7} {'lost':>5} {'dup':>4} "
        f"{'text=model':>10} {'stored ok':>9}"
    )
    lines += [header, "-" * len(header)]
    passed = True
    for r in results:
        for name, s in ((GATE, r.gate), (NONE, r.none)):
            ratio = f"{r.ratio:.3f}" if name == GATE else "1"
            lines.append(
                f"{r.n:>4} {name:<5} {s.samples - s.failed:>3}/{s.samples:<3} "
                f"{ms(percentile(s.e2e, 50)):>8} {ms(percentile(s.e2e, 99)):>8} {ratio:>9} "
                f"{ms(percentile(s.first, 50)):>13} {ms(percentile(s.first, 99)):>8} "
                f"{s.deltas_per_reply:>7.1f} {s.lost:>5} {s.duplicated:>4} "
                f"{100 * s.text_ok / max(1, s.samples):>9.1f}% "
                f"{100 * s.stored_ok / max(1, s.samples):>8.1f}%"
            )
        spread = ", ".join(f"{x:.3f}" for x in r.round_ratios)
        # How far single pairs of rounds scatter says how much of the ratio is noise.
        lines.append(
            f"     N={r.n}: p50 ratio of each round pair: {spread} "
            f"(median {statistics.median(r.round_ratios):.3f})"
        )
        checks = [
            (
                "every reply complete, 0 lost/duplicated deltas, text = stored = model, "
                "moderation passed (gate) / unchecked (none) on question and reply",
                r.gate.correct and r.none.correct,
            )
        ]
        if r.n == TARGET_N:
            checks.append(
                (f"e2e ratio p50 {r.ratio:.3f} <= {TARGET_RATIO}", r.ratio <= TARGET_RATIO)
            )
        for label, ok in checks:
            lines.append(f"     N={r.n}: {'PASS' if ok else 'FAIL'}  {label}")
            passed = passed and ok
    if TARGET_N not in [r.n for r in results]:
        lines.append(f"     (the ratio target applies at N={TARGET_N}; this run has no such N)")

    lines.append("")
    lines.append(
        f"gate windows per reply: {check['windows']} (sentences of "
        f"{min(check['window_chars'])}-{max(check['window_chars'])} characters), each "
        f"checked with up to {check['context_chars']} characters released before it; "
        "plus one check of the question and one of the whole answer"
    )
    lines.append("")
    lines.append(
        "CPU during the timed part, ms per reply (machine: every process, Redis, PostgreSQL "
        "and other users included; busy: share of all cores)"
    )
    names = ("asgi", "worker", "model", "client", "machine")
    lines.append(f"{'N':>4} {'side':<5} " + " ".join(f"{n:>8}" for n in names) + f" {'busy':>6}")
    for r in results:
        for name, s in ((GATE, r.gate), (NONE, r.none)):
            cells = [f"{s.cpu.get(n, 0.0) * 1000 / max(1, s.samples):>8.1f}" for n in names]
            wall = s.cpu.get("wall", 0.0)
            busy = s.cpu.get("machine", 0.0) / (wall * (os.cpu_count() or 1)) if wall else math.nan
            lines.append(f"{r.n:>4} {name:<5} " + " ".join(cells) + f" {busy * 100:>5.0f}%")
    lines.append(
        f"the gate's own work for one reply (window search, {check['windows']} windows + "
        "question + whole answer checked; timed in one process, no I/O): "
        f"{check['cpu_ms']:.2f} ms CPU"
    )
    for r in results:
        extra = (
            r.gate.cpu.get("worker", 0.0) / max(1, r.gate.samples)
            - r.none.cpu.get("worker", 0.0) / max(1, r.none.samples)
        ) * 1000
        lines.append(f"worker CPU per reply at N={r.n}, gate - none: {extra:+.1f} ms")
    lines.append("")
    lines.append(f"overall: {'PASS' if passed else 'FAIL'}")
    return "\n".join(lines), passed


# --- Main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.moderation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", default="1,50", help="comma-separated visitor counts")
    parser.add_argument("--reply-words", type=int, default=100)
    parser.add_argument("--first-token-delay", type=float, default=0.2, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    parser.add_argument(
        "--min-samples", type=int, default=20,
        help="repeat rounds of a small N until it has this many replies per stack",
    )  # fmt: skip
    parser.add_argument(
        "--min-rounds", type=int, default=8,
        help="rounds per stack at every N: the ratio of two single rounds at N=50 moves "
        "by a few percent with what else the machine does, more rounds average that out",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency-worker", type=int, default=256,
        help="Celery worker --concurrency and REPLY_CONCURRENCY (raised to the largest N)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=-1,
        help="visitors in an untimed first round on each stack (default: the largest N)",
    )  # fmt: skip
    add_stack_arguments(parser, redis_db=14, set_example="STREAM_COALESCE_MS=100")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per reply")
    parser.add_argument(
        "--py-spy", metavar="DIR",
        help="record py-spy profiles (collapsed stacks) of both stacks' ASGI server and "
        "worker during the largest N into DIR (needs py-spy in the venv)",
    )  # fmt: skip
    return parser.parse_args(argv)


def check_text(env: dict[str, str], site_key: str, tokens: list[str], expected: str) -> dict:
    """The gate's view of the model's answer (see CHECK_TEXT); raises if it would not pass."""
    code = (
        f"SITE_KEY = {site_key!r}\nQUESTION = {QUESTION!r}\nTOKENS = {tokens!r}\nREPEAT = 50\n"
        + CHECK_TEXT
    )
    out = manage(env, "shell", "-c", code)
    check = json.loads(out.split("result", 1)[1])
    if (
        check["provider"] != "offline"
        or check["question"] != "passed"
        or check["stopped"] is not None
        or check["released"] != expected
        or check["final"] != "passed"
    ):
        raise RuntimeError(f"the model's answer would not pass the offline gate: {check}")
    return check


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ns = [int(part) for part in args.n.split(",") if part.strip()]
    concurrency = max(args.concurrency_worker, *ns)
    tokens = support_reply_tokens(args.reply_words)
    expected = "".join(tokens)
    db_name = f"supportbot_bench_{os.getpid()}"
    started = datetime.datetime.now(datetime.UTC)
    children: list = []
    stacks: dict[str, Stack] = {}
    with stack.log_dir() as logs, bench_database(args.database_url, db_name) as db_url:
        with children_stopped(children, logs, args.keep_logs):
            # One model server for both stacks: the same pacing and the same text.
            llm = start_model(args, logs, "--reply-sentences")
            children.append(llm)
            extra = dict(item.split("=", 1) for item in args.set)
            envs = {}
            for name, switch in ((GATE, {}), (NONE, {"MODERATION_ENABLED": "false"})):
                # server_env gives each stack its own CELERY_QUEUE: the two workers never
                # take each other's tasks although they share Redis.
                envs[name] = stack.server_env(
                    database=django_database(db_url),
                    redis_url=args.redis_url,
                    llm_base_url=llm.url,
                    REPLY_CONCURRENCY=str(concurrency),
                    **{**BENCH_SERVER_SETTINGS, **POOL_SETTINGS, **extra, **switch},
                )
            manage(envs[GATE], "migrate", "--noinput")
            site_keys = {
                name: manage(env, "shell", "-c", CREATE_SITE).split("site_key", 1)[1].strip()
                for name, env in envs.items()
            }
            check = check_text(envs[GATE], site_keys[GATE], tokens, expected)
            for name, env in envs.items():
                worker = stack.CeleryWorker(env, logs, concurrency=concurrency)
                children.append(worker)
                asgi = stack.AsgiServer(env, logs)
                children.append(asgi)
                pids = {
                    "asgi": asgi.process.pid,
                    "worker": worker.process.pid,
                    "model": llm.process.pid,
                }
                stacks[name] = Stack(name, asgi, worker, site_keys[name], pids)
            background = background_load()
            print(
                header_line(args, started, background, concurrency, title="moderation benchmark")
                + "; two stacks: gate (offline moderator) and none (MODERATION_ENABLED=false), "
                f"database pool {envs[GATE]['DB_POOL_MAX_SIZE']} per process",
                flush=True,
            )
            results = run_loop(measure(args, ns, stacks, db_url, expected))
            for side in stacks.values():
                report_server_problems([side.worker], side.asgi)
    table, passed = render(results, check)
    print(table)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
