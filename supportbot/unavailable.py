"""HTTP answers while the database is away: 503 with the API's error body, not a 500."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from supportbot.postgresql.base import PROBE_WAIT_SECONDS

logger = logging.getLogger("supportbot.db")


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that could not reach the database (down, restarting, failing over, or
    out of connections) answers 503 `unavailable` with Retry-After, so clients
    retry; a 500 would say the request itself was wrong. Other database errors
    (integrity, programming) stay 500s: retrying them does not help."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning("%s %s: database unavailable (%s)", request.method, request.path, exception)
        response = JsonResponse(
            {
                "error": {
                    "code": "unavailable",
                    "detail": "The service is briefly unavailable; try again.",
                }
            },
            status=503,
        )
        response["Retry-After"] = str(round(PROBE_WAIT_SECONDS))
        return response
