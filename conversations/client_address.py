"""The address a request or websocket came from, for rate limits."""

from __future__ import annotations

from django.conf import settings


def from_headers_and_peer(headers: dict[str, str], peer: str | None) -> str:
    if settings.TRUST_X_FORWARDED_FOR:
        forwarded = headers.get("x-forwarded-for", "")
        # The nearest proxy appends the real peer last; earlier entries are the client's word.
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1][:64]
    return (peer or "unknown")[:64]


def from_scope(scope: dict) -> str:
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", [])
    }
    client = scope.get("client")
    return from_headers_and_peer(headers, client[0] if client else None)


def from_request(request) -> str:
    headers = {"x-forwarded-for": request.META.get("HTTP_X_FORWARDED_FOR", "")}
    return from_headers_and_peer(headers, request.META.get("REMOTE_ADDR"))
