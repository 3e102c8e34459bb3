"""Moderation of visitors' messages and of answers, behind one interface.

`moderator_for(site)` gives the site's provider: the OpenAI-compatible
moderation API (conversations/llm/moderation.py) or the offline moderator that
runs in the worker. Both return a `Verdict`; the API raises
`ModerationUnavailable` when it cannot answer, and the caller decides whether
that fails closed (the default) or open (a site's choice).
"""

from __future__ import annotations

from django.conf import settings

from conversations.moderation.verdict import (
    FLAGGED,
    PASSED,
    UNCHECKED,
    ModerationUnavailable,
    Moderator,
    Verdict,
)

__all__ = [
    "FLAGGED",
    "PASSED",
    "UNCHECKED",
    "Moderator",
    "ModerationUnavailable",
    "Verdict",
    "moderator_for",
]


class _NotConfigured:
    """A site set to use the API on a deployment that has none: never a verdict."""

    name = "api"

    async def check(self, text: str) -> Verdict:
        raise ModerationUnavailable(
            "not_configured", "the site uses the moderation API, but MODERATION_BASE_URL is unset"
        )


class _Disabled:
    """MODERATION_ENABLED=false: every text is let through, marked unchecked."""

    name = "disabled"

    async def check(self, text: str) -> Verdict:
        return Verdict(UNCHECKED, provider="disabled", detail="moderation is disabled")


_api = None
_offline = None


def enabled() -> bool:
    return settings.MODERATION_ENABLED


def moderator_for(site) -> Moderator:
    global _api, _offline
    if not settings.MODERATION_ENABLED:
        return _Disabled()
    provider = site.moderation_provider
    if provider == "auto":
        provider = "api" if settings.MODERATION_BASE_URL else "offline"
    if provider == "api":
        if not settings.MODERATION_BASE_URL:
            return _NotConfigured()
        if _api is None:
            from conversations.llm.moderation import ModerationClient

            _api = ModerationClient.from_settings()
        return _api
    if _offline is None:
        from conversations.moderation.offline import OfflineModerator

        _offline = OfflineModerator()
    return _offline
