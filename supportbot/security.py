"""The Content-Security-Policy of the pages supportbot serves itself.

Django 5.2 has no CSP support of its own (6.0 has), so this middleware sets one
header on every HTML response: the demo page, the agent console, the admin and
error pages. Other responses (the JSON API, the widget's script) get none: a policy
only governs documents, and the widget runs under its host page's policy, not ours.

What the policy allows, and why (see docs/operations.md, "Production security"):

- scripts only from our own origin, never inline: the pages load their scripts with
  `<script src>` and pass data in `json_script` blocks, which are not executed;
- inline styles: the demo page, the admin's conversation pages and the widget's
  shadow root (when the browser lacks constructable stylesheets) use `<style>`;
  inline styles cannot run code, so this costs little;
- websockets to our own host, named explicitly because browsers older than CSP
  level 3 do not count ws:/wss: as 'self';
- no framing, no plugins, no `<base>`, forms posting to our own origin only.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase

HEADER = "Content-Security-Policy"

DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "object-src 'none'",
)
STATIC_POLICY = "; ".join(DIRECTIVES)


def policy_for(request: HttpRequest) -> str:
    """The policy for a page served to this request (its own host's websockets)."""
    try:
        # Validated against ALLOWED_HOSTS, and only host characters: safe in a header.
        host = request.get_host()
    except DisallowedHost:
        return f"{STATIC_POLICY}; connect-src 'self'"
    return f"{STATIC_POLICY}; connect-src 'self' ws://{host} wss://{host}"


def _is_html(response: HttpResponseBase) -> bool:
    content_type = response.get("Content-Type", "")
    return content_type.split(";", 1)[0].strip().lower() == "text/html"


class ContentSecurityPolicyMiddleware:
    """Adds Content-Security-Policy to HTML responses that do not set their own."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.__acall__(request)
        return self._add_policy(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        return self._add_policy(request, await self.get_response(request))

    @staticmethod
    def _add_policy(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if HEADER not in response and _is_html(response):
            response[HEADER] = policy_for(request)
        return response
