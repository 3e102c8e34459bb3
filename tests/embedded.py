"""Embedded PostgreSQL and Redis for a test run on a machine that has neither
configured (no DATABASE_URL / REDIS_URL): real servers, started once per run in a
temporary folder and stopped when the run ends."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supportbot.local.postgres import EmbeddedPostgres


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


@contextlib.contextmanager
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of one test's own, on a free port with its own data folder,
    that the test may stop (fast shutdown) and start again on the same port: fault
    tests must never touch the server the rest of the suite uses. Removed on exit."""
    from supportbot.local import process
    from supportbot.local.postgres import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="supportbot-test-own-postgres-"))
    server = EmbeddedPostgres(root, port=process.free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
