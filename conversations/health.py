"""GET /healthz: are the database and Redis answering, and does a Celery worker
consume the reply queue?"""

from __future__ import annotations

import logging
import time
import uuid

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from conversations.redis_clients import probe_redis, sync_redis

logger = logging.getLogger(__name__)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    # Not the shared client: that one waits up to REDIS_RETRY_SECONDS for Redis to
    # come back, and a probe must answer at once.
    probe_redis().ping()


# How long a probe task may take to be consumed before the workers count as stuck.
PROBE_TIMEOUT = 3.0


class WorkerNotConsuming(RuntimeError):
    """No worker took a task from the reply queue in time."""


def _check_worker() -> None:
    """A real task through the reply queue, not a control ping: a worker whose
    consumer stopped after a broker reconnect (a known Celery-on-Redis failure)
    still answers pings, but takes no tasks."""
    from conversations.tasks import health_probe

    token = uuid.uuid4().hex
    health_probe.apply_async((token,), expires=PROBE_TIMEOUT * 3)
    deadline = time.monotonic() + PROBE_TIMEOUT
    redis = sync_redis()
    while time.monotonic() < deadline:
        if redis.exists(health_probe_key(token)):
            redis.delete(health_probe_key(token))
            return
        time.sleep(0.05)
    raise WorkerNotConsuming(f"no worker consumed a probe task within {PROBE_TIMEOUT:g} s")


def health_probe_key(token: str) -> str:
    return f"health:probe:{token}"


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database, "redis": _check_redis, "worker": _check_worker}
    results: dict[str, dict] = {}
    healthy = True
    for name, check in checks.items():
        started = time.monotonic()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:
            healthy = False
            # Name the failure, never the connection string (it may hold a password).
            results[name] = {"ok": False, "error": type(exc).__name__}
            logger.warning("health check %s failed: %s", name, type(exc).__name__)
        results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return JsonResponse({"ok": healthy, "checks": results}, status=200 if healthy else 503)
