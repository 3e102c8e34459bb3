"""Embedded PostgreSQL and Redis for a test run on a machine that has neither
configured (no DATABASE_URL / REDIS_URL): real servers, started once per run in a
temporary folder and stopped when the run ends."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def _start(server_class, name: str) -> str:
    root = Path(tempfile.mkdtemp(prefix=f"supportbot-test-{name}-"))
    server = server_class(root)

    def stop() -> None:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return server.start()


def start_postgres() -> str:
    from supportbot.local.postgres import EmbeddedPostgres

    return _start(EmbeddedPostgres, "postgres")


def start_redis() -> str:
    from supportbot.local.redis import EmbeddedRedis

    return _start(EmbeddedRedis, "redis")
