"""`make run`: the whole product on one machine, with embedded services for whatever
is not configured. Ctrl-C (or SIGTERM) stops everything it started.

    python -m supportbot.launcher

Steps: embedded PostgreSQL / Redis / local model when DATABASE_URL / REDIS_URL /
LLM_BASE_URL (or an API key) are unset; migrate; a demo site and admin; then the
ASGI server and a Celery worker, supervised; ready once /healthz passes.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from supportbot.local import paths, process
from supportbot.local.supervisor import Child, Supervisor

logger = logging.getLogger("supportbot.launcher")
ROOT = paths.BASE_DIR
DEFAULT_PORT = 8000


class LaunchError(Exception):
    """A problem the person running the launcher can fix; printed without a traceback."""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _port_from_env() -> tuple[str, int, bool]:
    host = os.environ.get("HOST", "127.0.0.1").strip() or "127.0.0.1"
    raw = os.environ.get("PORT", "").strip()
    if not raw:
        return host, DEFAULT_PORT, False
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LaunchError(f"PORT must be a number from 1 to 65535, got {raw!r}")
    return host, int(raw), True


def _choose_port(host: str, port: int, explicit: bool) -> int:
    if process.port_free(host, port):
        return port
    if explicit:
        raise LaunchError(
            f"Port {port} on {host} is already in use. Stop the program using it, "
            f"or choose another port: PORT=8080 make run"
        )
    other = process.free_port(host)
    say(f"port {port} is in use; serving on port {other} instead (set PORT to choose)")
    return other


def _single_instance(run_dir: Path) -> Path:
    pid_file = run_dir / "launcher.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        pid = 0
    if pid and pid != os.getpid() and process.pid_alive(pid):
        if "supportbot.launcher" in process.cmdline(pid):
            raise LaunchError(
                f"supportbot is already running from this folder (launcher pid {pid}). "
                "Stop it with Ctrl-C in its terminal, or: kill " + str(pid)
            )
    pid_file.write_text(str(os.getpid()))
    return pid_file


def _secret_key() -> str:
    path = paths.secret_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created unreadable to others from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


class Launcher:
    def __init__(self) -> None:
        self.var = paths.var_dir()
        self.run_dir = self.var / "run"
        self.embedded: list = []
        self.supervisor = Supervisor()
        self.stop_requested = False

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_requested:
            return
        self.stop_requested = True
        print(flush=True)
        say(f"{signal.Signals(signum).name} received: stopping")

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid_file = _single_instance(self.run_dir)
        try:
            host, port, explicit = _port_from_env()
            port = _choose_port(host, port, explicit)
            env = self._environment(host, port)
            if self.stop_requested:
                return 130
            self._manage(env, "migrate", "--noinput", what="applying database migrations")
            self._manage(env, "ensure_demo", "--origin", f"http://{host}:{port}",
                         "--origin", f"http://localhost:{port}",
                         "--origin", f"http://127.0.0.1:{port}",
                         what="preparing the demo site and admin account")  # fmt: skip
            self._start_servers(env, host, port)
            self._wait_ready(host, port)
            if not self.stop_requested:
                self._print_ready(host, port)
            while not self.stop_requested:
                self.supervisor.poll()
                time.sleep(0.2)
            return 0
        finally:
            self._shutdown()
            pid_file.unlink(missing_ok=True)

    # --- Steps -----------------------------------------------------------------

    def _environment(self, host: str, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("SECRET_KEY", _secret_key())
        env.setdefault("DEBUG", "0")
        # `make run` serves plain HTTP on this machine: Secure cookies would be
        # dropped by some browsers, and the admin login with them. HSTS is only ever
        # sent over HTTPS, so it needs no change.
        env.setdefault("SECURE_COOKIES", "false")
        hosts = {"127.0.0.1", "localhost", host}
        env.setdefault("ALLOWED_HOSTS", ",".join(sorted(hosts)))
        env["PYTHONUNBUFFERED"] = "1"
        state: dict[str, str] = {}
        if not env.get("DATABASE_URL"):
            from supportbot.local.postgres import EmbeddedPostgres

            say("starting the embedded PostgreSQL (data in var/postgres)")
            server = EmbeddedPostgres(self.var / "postgres")
            self.embedded.append(server)
            state["DATABASE_URL"] = env["DATABASE_URL"] = self._start(server.start)
        if not env.get("REDIS_URL"):
            from supportbot.local.redis import EmbeddedRedis

            say("starting the embedded Redis (data in var/redis)")
            server = EmbeddedRedis(self.var / "redis")
            self.embedded.append(server)
            state["REDIS_URL"] = env["REDIS_URL"] = self._start(server.start)
        if not (env.get("LLM_BASE_URL") or env.get("LLM_API_KEY") or env.get("OPENAI_API_KEY")):
            from supportbot.local.model import MODEL_NAME, LocalModelServer

            say("starting the local model (SmolLM2-135M-Instruct via llama.cpp)")
            server = LocalModelServer(self.var / "model")
            self.embedded.append(server)
            state["LLM_BASE_URL"] = env["LLM_BASE_URL"] = self._start(server.start)
            state["LLM_MODEL"] = env["LLM_MODEL"] = env.get("LLM_MODEL") or MODEL_NAME
        # manage.py run by hand from this checkout reads this to reach the same services.
        paths.write_state(state)
        return env

    def _start(self, start) -> str:
        try:
            return start()
        except RuntimeError as exc:
            raise LaunchError(str(exc)) from None
        except subprocess.CalledProcessError as exc:
            output = (exc.stderr or b"").decode(errors="replace")[-2000:]
            raise LaunchError(
                f"{exc.cmd[0]} failed with status {exc.returncode}\n{output}"
            ) from None

    def _manage(self, env: dict[str, str], *args: str, what: str) -> None:
        say(what)
        result = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=False
        )
        if result.returncode != 0:
            raise LaunchError(f"manage.py {args[0]} failed with status {result.returncode}")

    def _start_servers(self, env: dict[str, str], host: str, port: int) -> None:
        say(f"starting the web server on {host}:{port} and a Celery worker")
        web = [sys.executable, "-m", "uvicorn", "supportbot.asgi:application",
               "--host", host, "--port", str(port), "--ws-max-size", str(1024 * 1024),
               "--lifespan", "off", "--no-access-log"]  # fmt: skip
        worker = [sys.executable, "-m", "celery", "-A", "supportbot", "worker",
                  "--pool", "threads", "--concurrency", env.get("REPLY_CONCURRENCY", "256"),
                  "--without-mingle", "--without-gossip", "--loglevel", "INFO"]  # fmt: skip
        self.supervisor.add(Child("web", web, env, str(ROOT)))
        self.supervisor.add(Child("worker", worker, env, str(ROOT), ready_marker=" ready."))

    def _wait_ready(self, host: str, port: int, timeout: float = 90) -> None:
        url = f"http://{_connect_host(host)}:{port}/healthz"
        deadline = time.monotonic() + timeout
        worker = self.supervisor.children[-1]
        # /healthz fails (and logs an error) until the worker answers pings.
        while not worker.ready.is_set() and time.monotonic() < deadline:
            if self.stop_requested:
                return
            self.supervisor.poll()
            worker.ready.wait(0.2)
        if not worker.ready.is_set():
            raise LaunchError(f"the Celery worker did not start within {timeout:g}s (see above)")
        while not self.stop_requested and time.monotonic() < deadline:
            self.supervisor.poll()
            try:
                if httpx.get(url, timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        if not self.stop_requested:
            raise LaunchError(f"the servers did not pass {url} within {timeout:g}s")

    def _print_ready(self, host: str, port: int) -> None:
        base = f"http://{_connect_host(host)}:{port}"
        password_file = self.var / "admin-password"
        password = password_file.read_text().strip() if password_file.exists() else "(unchanged)"
        print(
            "\n"
            f"  supportbot is ready.\n\n"
            f"  Demo page with the chat widget:  {base}/\n"
            f"  Admin:                           {base}/admin/   "
            f"(user: admin, password: {password})\n"
            f"  Agent console:                   {base}/agent/   (same login)\n"
            f"  Health:                          {base}/healthz\n\n"
            "  Press Ctrl-C to stop.\n",
            flush=True,
        )

    def _shutdown(self) -> None:
        self.supervisor.stop()
        for server in reversed(self.embedded):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                logger.error("could not stop %s: %s", type(server).__name__, exc)
        paths.clear_state()
        say("stopped")


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportbot.settings")
    try:
        return Launcher().run()
    except LaunchError as exc:
        print(f"\nsupportbot: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
