"""A client for any OpenAI-compatible /moderations endpoint.

A moderation check sits in front of what a visitor sees, so one call -- retries,
backoff and Retry-After waits included -- never takes longer than `timeout`.
Failures are ModerationUnavailable with a code saying what went wrong; the caller
decides whether that fails open or closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import weakref
from typing import Any

import httpx

from conversations.llm.client import RETRY_STATUSES, _error_message, _retry_after, redact
from conversations.moderation.verdict import FLAGGED, PASSED, ModerationUnavailable, Verdict

logger = logging.getLogger(__name__)

# A moderation answer is a few kilobytes; anything this large is not one, and reading
# it all would let a broken or hostile endpoint fill the worker's memory.
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_ERROR_BODY = 2000
# Bounds on what is stored with each message (the provider column is 50 characters).
MAX_CATEGORY_NAME = 60
MAX_CATEGORIES = 50
MAX_PROVIDER = 50
# Backoff stays short: the whole call has a budget of a few seconds.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 1.0


class _Retry(Exception):
    def __init__(self, error: ModerationUnavailable, wait: float | None) -> None:
        self.error = error
        self.wait = wait


class _TooLarge(Exception):
    pass


class ModerationClient:
    """Moderator backed by an HTTP moderation API (OpenAI's shape)."""

    name = "api"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        model: str = "omni-moderation-latest",
        timeout: float = 5.0,
        max_retries: int = 1,
    ) -> None:
        if not base_url:
            raise ModerationUnavailable(
                "not_configured", "No moderation endpoint: set MODERATION_BASE_URL"
            )
        self.url = base_url.rstrip("/") + "/moderations"
        self._api_key = api_key
        self.model = model
        self.provider = f"api:{model}"[:MAX_PROVIDER]
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        # Spelled out so the API key can never end up in a log line or a traceback.
        return f"ModerationClient(url={self.url!r}, model={self.model!r})"

    @classmethod
    def from_settings(cls) -> ModerationClient:
        from django.conf import settings

        return cls(
            base_url=settings.MODERATION_BASE_URL,
            api_key=settings.MODERATION_API_KEY,
            model=settings.MODERATION_MODEL,
            timeout=settings.MODERATION_TIMEOUT,
            max_retries=settings.MODERATION_MAX_RETRIES,
        )

    def _client(self) -> httpx.AsyncClient:
        # One pooled client per event loop: connections are reused across checks.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            headers = {"Accept": "application/json"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            client = httpx.AsyncClient(
                # asyncio.timeout bounds the whole call; these only stop httpx from
                # waiting longer than that on any single step.
                timeout=httpx.Timeout(self.timeout),
                headers=headers,
                limits=httpx.Limits(max_connections=500, max_keepalive_connections=64),
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the pooled connections of the running event loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def check(self, text: str) -> Verdict:
        """A verdict on `text`; raises ModerationUnavailable when none can be had in time."""
        started = time.monotonic()
        body = {"model": self.model, "input": text}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                raw = await self._post_with_retries(body, deadline)
        except TimeoutError:
            raise ModerationUnavailable(
                "timeout", f"no moderation verdict within {self.timeout:g}s"
            ) from None
        flagged, categories, scores = _parse(raw)
        return Verdict(
            status=FLAGGED if flagged else PASSED,
            categories=categories,
            scores=scores,
            provider=self.provider,
            latency_ms=round((time.monotonic() - started) * 1000),
        )

    async def _post_with_retries(self, body: dict[str, Any], deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        for attempt in range(self.max_retries + 1):
            try:
                return await self._attempt(body)
            except _Retry as retry:
                if attempt == self.max_retries:
                    raise retry.error from None
                wait = self._backoff(attempt) if retry.wait is None else retry.wait
                # Waiting past the deadline would only turn a clear error into a timeout.
                if wait >= deadline - loop.time():
                    raise retry.error from None
                logger.warning(
                    "moderation call failed (%s: %s), retry %d in %.2fs",
                    retry.error.code,
                    retry.error,
                    attempt + 1,
                    wait,
                )
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.5)

    async def _attempt(self, body: dict[str, Any]) -> bytes:
        """One request. Its errors never carry the API key, which a provider may echo
        in an error body: their messages are logged."""
        try:
            return await self._attempt_once(body)
        except _Retry as retry:
            raise _Retry(self._scrubbed(retry.error), retry.wait) from None
        except ModerationUnavailable as error:
            raise self._scrubbed(error) from None

    def _scrubbed(self, error: ModerationUnavailable) -> ModerationUnavailable:
        message = redact(str(error), self._api_key)
        return error if message == str(error) else ModerationUnavailable(error.code, message)

    async def _attempt_once(self, body: dict[str, Any]) -> bytes:
        client = self._client()
        try:
            async with client.stream("POST", self.url, json=body) as response:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return await _read_limited(response, MAX_RESPONSE_BYTES)
                    except _TooLarge:
                        raise ModerationUnavailable(
                            "bad_response",
                            f"moderation response larger than {MAX_RESPONSE_BYTES} bytes",
                        ) from None
                await _raise_for_status(response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            reason = str(exc) or type(exc).__name__
            error = ModerationUnavailable("connect", f"cannot connect: {reason}")
            raise _Retry(error, None) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # Typically a pooled keep-alive connection the server had already closed;
            # a moderation request is safe to send again.
            error = ModerationUnavailable("connect", f"connection lost: {exc}")
            raise _Retry(error, None) from None
        except httpx.TimeoutException:
            raise ModerationUnavailable(
                "timeout", f"no moderation verdict within {self.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise ModerationUnavailable("connect", f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    """The body, raising _TooLarge as soon as it exceeds `limit` bytes."""
    data = bytearray()
    async for piece in response.aiter_bytes():
        data += piece
        if len(data) > limit:
            raise _TooLarge
    return bytes(data)


async def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    data = bytearray()
    # An error body is only read for its message, so stop early rather than fail.
    async for piece in response.aiter_bytes():
        data += piece
        if len(data) >= MAX_ERROR_BODY:
            break
    detail = _error_message(bytes(data[:MAX_ERROR_BODY])) or response.reason_phrase
    message = f"HTTP {status}: {detail}"
    if status in RETRY_STATUSES or 500 <= status < 600:
        code = "rate_limited" if status == 429 else "server_error"
        raise _Retry(ModerationUnavailable(code, message), _retry_after(response.headers))
    if status in (401, 403):
        raise ModerationUnavailable("auth", message)
    if 400 <= status < 500:
        raise ModerationUnavailable("bad_request", message)
    # 1xx/3xx: redirects are not followed, a moved endpoint is a misconfiguration.
    raise ModerationUnavailable("bad_response", message)


def _bad(message: str) -> ModerationUnavailable:
    return ModerationUnavailable("bad_response", f"malformed moderation response: {message}")


def _name_ok(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_CATEGORY_NAME


def _score(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        score = float(value)
    except OverflowError:
        return None
    # NaN and infinities cannot be stored in a JSON column.
    return score if math.isfinite(score) else None


def _parse(raw: bytes) -> tuple[bool, tuple[str, ...], dict[str, float]]:
    """(flagged, flagged category names, scores) of the first result."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise _bad("not JSON") from None
    if not isinstance(body, dict):
        raise _bad("not an object")
    results = body.get("results")
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        raise _bad("no results")
    result = results[0]

    flagged = result.get("flagged")
    if not isinstance(flagged, bool):
        raise _bad("flagged is not a boolean")

    raw_categories = result.get("categories", {})
    if not isinstance(raw_categories, dict):
        raise _bad("categories is not an object")
    categories = sorted(
        name for name, value in raw_categories.items() if value is True and _name_ok(name)
    )[:MAX_CATEGORIES]

    raw_scores = result.get("category_scores", {})
    if not isinstance(raw_scores, dict):
        raise _bad("category_scores is not an object")
    scores = {}
    for name, value in raw_scores.items():
        score = _score(value)
        if score is not None and _name_ok(name):
            scores[name] = score
    if len(scores) > MAX_CATEGORIES:
        # Keep the categories that came closest to flagging: they are the informative ones.
        keep = set(sorted(scores, key=lambda name: (-scores[name], name))[:MAX_CATEGORIES])
        scores = {name: value for name, value in scores.items() if name in keep}
    return flagged, tuple(categories), scores
