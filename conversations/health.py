"""GET /healthz: is the database, Redis and at least one Celery worker answering?"""

from __future__ import annotations

import logging
import time

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from conversations.redis_clients import sync_redis

logger = logging.getLogger(__name__)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    sync_redis().ping()


def _check_worker() -> None:
    from supportbot.celery import app

    if not app.control.ping(timeout=1.0, limit=1):
        raise RuntimeError("no Celery worker answered a ping within 1 s")


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
