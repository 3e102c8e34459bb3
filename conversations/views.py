"""The visitor HTTP API (docs/protocol.md)."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from conversations import ratelimit, selectors, services, visitors
from conversations.client_address import from_request
from conversations.models import Site
from conversations.serializers import conversation_dict, message_dict

MAX_BODY_BYTES = 16 * 1024


def _error(
    status: int, code: str, detail: str, *, retry_after: int | None = None, **headers: str
) -> JsonResponse:
    error: dict[str, Any] = {"code": code, "detail": detail}
    if retry_after is not None:
        error["retry_after"] = retry_after
        headers["Retry-After"] = str(retry_after)
    response = JsonResponse({"error": error}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _with_cors(
    response: HttpResponse, request: HttpRequest, site: Site | None = None
) -> HttpResponse:
    """Allow the widget's origin to read the response, for that site's origins only.

    Without a known site (a preflight, or an error before the site is known) any
    site that lists the origin will do, so a browser can read the error.
    """
    origin = request.headers.get("Origin")
    if origin and site is None:
        site = selectors.site_allowing_origin(origin)
    if origin and site is not None and site.allows_origin(origin):
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response["Access-Control-Max-Age"] = "600"
        response["Access-Control-Expose-Headers"] = "Retry-After"
        response["Vary"] = "Origin"
    return response


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        raw = request.body
    except RequestDataTooBig:
        # Over Django's own limit (DATA_UPLOAD_MAX_MEMORY_SIZE): the protocol's 400,
        # not Django's HTML one.
        return None
    if len(raw) > MAX_BODY_BYTES:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _conversation_limits(request: HttpRequest, site: Site) -> ratelimit.Verdict:
    """New conversations per hour, per client address and per site, in one atomic step."""
    site_limit = ratelimit.site_limit(
        site.rate_conversations_per_hour, settings.RATE_SITE_CONVERSATIONS_PER_HOUR
    )
    address_limit = settings.RATE_CONVERSATIONS_PER_HOUR
    return ratelimit.check(
        [
            ratelimit.Window(
                "conversations", from_request(request), address_limit, 3600, "address_conversations"
            ),
            ratelimit.Window(
                "conversations-site", str(site.pk), site_limit, 3600, "site_conversations"
            ),
        ]
    )


def _rate_limited(verdict: ratelimit.Verdict) -> JsonResponse:
    """429 naming the limit (an extension) and when to come back."""
    error = {
        "code": "rate_limited",
        "detail": verdict.detail,
        "retry_after": verdict.retry_after,
        "limit": verdict.limit,
    }
    response = JsonResponse({"error": error}, status=429)
    response["Retry-After"] = str(verdict.retry_after)
    return response


@csrf_exempt
@require_http_methods(["POST", "OPTIONS"])
def conversation_create(request: HttpRequest) -> HttpResponse:
    if request.method == "OPTIONS":
        # A preflight does not carry the site key, so any origin of a known site passes.
        response = HttpResponse(status=204)
        origin = request.headers.get("Origin", "")
        site = selectors.site_allowing_origin(origin)
        return _with_cors(response, request, site)
    body = _json_body(request)
    if body is None:
        error = _error(400, "bad_request", "The body must be a JSON object under 16 KiB.")
        return _with_cors(error, request)
    if not isinstance(body.get("site_key"), str):
        return _with_cors(_error(400, "bad_request", "site_key must be a string."), request)
    site = selectors.site_by_key(body.get("site_key"))
    if site is None:
        return _with_cors(_error(403, "forbidden", "Unknown site key."), request)
    origin = request.headers.get("Origin")
    if not site.allows_origin(origin):
        return _error(403, "forbidden", "This origin may not use this site key.")
    token = body.get("visitor_token")
    if token is not None and not isinstance(token, str):
        return _with_cors(
            _error(400, "bad_request", "visitor_token must be a string."), request, site
        )
    verdict = _conversation_limits(request, site)
    if not verdict.allowed:
        return _with_cors(_rate_limited(verdict), request, site)
    conversation, visitor_token = services.conversation_create(site=site, visitor_token=token)
    response = JsonResponse(
        {
            "conversation": conversation_dict(conversation),
            "visitor_token": visitor_token,
            "websocket_url": f"/ws/v1/conversations/{conversation.pk}/",
        },
        status=201,
    )
    return _with_cors(response, request, site)


@csrf_exempt
@require_http_methods(["GET", "OPTIONS"])
def message_list(request: HttpRequest, conversation_id: str) -> HttpResponse:
    if request.method == "OPTIONS":
        site = selectors.site_allowing_origin(request.headers.get("Origin", ""))
        return _with_cors(HttpResponse(status=204), request, site)
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or visitors.site_key_of(token) is None:
        error = _error(401, "unauthorized", "Send Authorization: Bearer <visitor_token>.")
        return _with_cors(error, request)
    conversation = selectors.conversation_for_visitor(conversation_id, token)
    if conversation is None:
        return _with_cors(_error(404, "not_found", "No such conversation."), request)
    site = conversation.site
    if not site.allows_origin(request.headers.get("Origin")):
        return _error(403, "forbidden", "This origin may not read this conversation.")
    raw_after = request.GET.get("after_seq", "0")
    # isascii: str.isdigit() also accepts digits like "²" that int() rejects.
    if not (raw_after.isascii() and raw_after.isdigit()) or len(raw_after) > 18:
        return _with_cors(
            _error(400, "bad_request", "after_seq must be a whole number, 0 or more."),
            request,
            site,
        )
    messages = selectors.messages_after(conversation.pk, int(raw_after))
    response = JsonResponse(
        {
            "messages": [message_dict(message) for message in messages],
            "last_seq": conversation.seq,
            "status": conversation.status,
        }
    )
    return _with_cors(response, request, site)


@csrf_exempt
@require_http_methods(["GET", "OPTIONS"])
def widget_config(request: HttpRequest, site_key: str) -> HttpResponse:
    """The public look of a site's widget: title, colour and greeting."""
    site = selectors.site_by_key(site_key)
    if request.method == "OPTIONS":
        return _with_cors(HttpResponse(status=204), request, site)
    if site is None:
        return _with_cors(_error(404, "not_found", "Unknown site key."), request)
    if not site.allows_origin(request.headers.get("Origin")):
        return _error(403, "forbidden", "This origin may not use this site key.")
    response = JsonResponse(
        {
            "title": site.widget_title,
            "colour": site.widget_colour,
            "greeting": site.widget_greeting,
        }
    )
    response["Cache-Control"] = "max-age=60"
    return _with_cors(response, request, site)


def demo_page(request: HttpRequest) -> HttpResponse:
    """The demo shop page, embedding the widget as a customer's site would."""
    from django.shortcuts import render
    from django.templatetags.static import static

    from conversations.management.commands.ensure_demo import DEMO_SITE_NAME

    site = Site.objects.filter(name=DEMO_SITE_NAME).first()
    return render(
        request,
        "demo.html",
        {
            "site_key": site.public_key if site else "",
            "widget_url": request.build_absolute_uri(static("supportbot/widget.js")),
        },
    )
