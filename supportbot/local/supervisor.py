"""Keeps the launcher's long-running children alive: restarts with backoff, logs deaths."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from supportbot.local import process

logger = logging.getLogger("supportbot.launcher")

MAX_BACKOFF = 30.0
# A child that ran this long before dying is restarted at once again.
HEALTHY_AFTER = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    popen: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0
    # A line of output that says the child is ready (e.g. Celery's " ready.").
    ready_marker: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.ready.clear()
        self.popen = subprocess.Popen(  # noqa: S603 - argv built by the launcher
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=process.die_with_parent,
        )
        self.started_at = time.monotonic()
        threading.Thread(target=self._relay_output, daemon=True).start()

    def _relay_output(self) -> None:
        # Prefix each line so the interleaved output of several children stays readable.
        assert self.popen is not None and self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip()
            if self.ready_marker and self.ready_marker in line:
                self.ready.set()
            sys.stdout.write(f"[{self.name}] {line}\n")
            sys.stdout.flush()


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False

    def add(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def poll(self) -> None:
        """Notice dead children and restart them when their backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if self.stopping:
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    logger.warning("restarting %s (restart #%d)", child.name, child.restarts)
                    child.start()
                continue
            assert child.popen is not None
            status = child.popen.poll()
            if status is None:
                continue
            lived = now - child.started_at
            child.failures = 0 if lived >= HEALTHY_AFTER else child.failures + 1
            delay = min(MAX_BACKOFF, 2.0 ** max(0, child.failures - 1)) if child.failures else 0.5
            logger.error(
                "%s (pid %d) exited with status %s after %.1fs; restarting in %.1fs",
                child.name, child.popen.pid, _describe(status), lived, delay,
            )  # fmt: skip
            child.restart_at = now + delay

    def stop(self, timeout: float = 20) -> None:
        self.stopping = True
        for child in self.children:
            if child.popen is not None and child.popen.poll() is None:
                child.popen.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.popen is None:
                continue
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", child.name)
                child.popen.kill()
                child.popen.wait(5)


def _describe(status: int) -> str:
    if status < 0:
        import signal

        try:
            return f"{status} (killed by {signal.Signals(-status).name})"
        except ValueError:
            return str(status)
    return str(status)
