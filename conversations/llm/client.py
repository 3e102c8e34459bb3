"""A streaming Chat Completions client for any OpenAI-compatible endpoint.

Bounded everywhere: connect and read timeouts, a deadline for the first token,
a bounded number of retries (only before the first token, only for failures
worth retrying) with jittered backoff that honours retry-after-ms / retry-after.
Failures are LLMError with a code and whether retrying later could help.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from conversations.text import made_storable

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 2000


class LLMError(Exception):
    """A model call that failed. `permanent` means the same request will fail again."""

    def __init__(self, code: str, message: str, *, permanent: bool, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.permanent = permanent
        self.status = status


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    # Function tools offered to the model (OpenAI's `tools`); None offers none.
    tools: list[dict[str, Any]] | None = None


@dataclass
class ChatResult:
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    time_to_first_token: float | None = None  # seconds from the request
    attempts: int = 0
    malformed_chunks: int = 0
    pieces: list[str] = field(default_factory=list)
    # Names of the tools the model called.
    tool_calls: list[str] = field(default_factory=list)


class _Retry(Exception):
    def __init__(self, error: LLMError, wait: float | None):
        self.error = error
        self.wait = wait


class LLMClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        first_token_timeout: float = 60.0,
        max_retries: int = 2,
        retry_max_wait: float = 20.0,
    ):
        if not base_url:
            raise LLMError(
                "not_configured",
                "No model endpoint: set LLM_BASE_URL, or LLM_API_KEY for the OpenAI API",
                permanent=True,
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self.timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=10, pool=10)
        self.first_token_timeout = first_token_timeout
        self.max_retries = max_retries
        self.retry_max_wait = retry_max_wait
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_settings(cls) -> LLMClient:
        from django.conf import settings

        return cls(
            base_url=settings.LLM_BASE_URL,
            api_key=settings.LLM_API_KEY,
            connect_timeout=settings.LLM_CONNECT_TIMEOUT,
            read_timeout=settings.LLM_READ_TIMEOUT,
            first_token_timeout=settings.LLM_FIRST_TOKEN_TIMEOUT,
            max_retries=settings.LLM_MAX_RETRIES,
            retry_max_wait=settings.LLM_RETRY_MAX_WAIT,
        )

    def _client(self) -> httpx.AsyncClient:
        # One pooled client per event loop: connections are reused across replies.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            headers = {"Accept": "text/event-stream"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            client = httpx.AsyncClient(
                timeout=self.timeout,
                headers=headers,
                limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256),
            )
            self._clients[loop] = client
        return client

    async def stream_chat(
        self, request: ChatRequest, on_piece: Callable[[str], None]
    ) -> ChatResult:
        """Stream a reply, calling on_piece(text) for each content piece as it arrives."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = request.tools
            body["tool_choice"] = "auto"
        started = time.monotonic()
        result = ChatResult()
        for attempt in range(self.max_retries + 1):
            result.attempts = attempt + 1
            try:
                await self._attempt(body, result, started, on_piece)
                return result
            except _Retry as retry:
                if attempt == self.max_retries:
                    raise retry.error from None
                wait = self._backoff(attempt) if retry.wait is None else retry.wait
                if wait > self.retry_max_wait:
                    raise retry.error from None
                logger.warning(
                    "model call failed (%s), retry %d in %.2fs", retry.error, attempt + 1, wait
                )
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return min(self.retry_max_wait, 0.5 * 2**attempt) * random.uniform(0.5, 1.5)

    async def _attempt(
        self,
        body: dict[str, Any],
        result: ChatResult,
        started: float,
        on_piece: Callable[[str], None],
    ) -> None:
        """One request. Its errors never carry the API key: a provider may echo the key
        in an error body ("Incorrect API key provided: sk-..."), and error messages are
        logged and kept."""
        try:
            await self._attempt_once(body, result, started, on_piece)
        except _Retry as retry:
            raise _Retry(self._scrubbed(retry.error), retry.wait) from None
        except LLMError as error:
            raise self._scrubbed(error) from None

    def _scrubbed(self, error: LLMError) -> LLMError:
        message = redact(str(error), self._api_key)
        if message == str(error):
            return error
        return LLMError(error.code, message, permanent=error.permanent, status=error.status)

    async def _attempt_once(
        self,
        body: dict[str, Any],
        result: ChatResult,
        started: float,
        on_piece: Callable[[str], None],
    ) -> None:
        client = self._client()
        try:
            async with asyncio.timeout(self.first_token_timeout) as first_token_deadline:
                async with client.stream("POST", self.url, json=body) as response:
                    if response.status_code != 200:
                        await self._raise_for_status(response)
                    await self._read_events(
                        response, result, started, on_piece, first_token_deadline
                    )
        except TimeoutError:
            raise LLMError(
                "timeout",
                f"no first token within {self.first_token_timeout:g}s",
                permanent=False,
            ) from None
        except httpx.ConnectError as exc:
            raise _Retry(
                LLMError("connect", f"cannot connect: {exc}", permanent=False), None
            ) from None
        except httpx.ConnectTimeout:
            raise _Retry(LLMError("connect", "connect timed out", permanent=False), None) from None
        except httpx.ReadTimeout:
            raise LLMError(
                "timeout",
                f"no data from the model API for {self.timeout.read:g}s",
                permanent=False,
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if not result.pieces:
                raise _Retry(
                    LLMError("interrupted", f"connection lost: {exc}", permanent=False), None
                ) from None
            raise LLMError("interrupted", f"stream broke off: {exc}", permanent=False) from None
        except httpx.HTTPError as exc:
            raise LLMError("http", f"{type(exc).__name__}: {exc}", permanent=False) from None

    async def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        raw = (await response.aread())[:MAX_ERROR_BODY]
        detail = _error_message(raw) or response.reason_phrase
        if status in RETRY_STATUSES:
            code = "rate_limited" if status == 429 else "server_error"
            error = LLMError(code, f"HTTP {status}: {detail}", permanent=False, status=status)
            raise _Retry(error, _retry_after(response.headers))
        code = {401: "auth", 403: "auth", 404: "not_found"}.get(status, "bad_request")
        raise LLMError(code, f"HTTP {status}: {detail}", permanent=True, status=status)

    async def _read_events(
        self,
        response: httpx.Response,
        result: ChatResult,
        started: float,
        on_piece: Callable[[str], None],
        first_token_deadline: asyncio.Timeout,
    ) -> None:
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, event: lines
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError("chunk is not an object")
            except ValueError:
                # A broken chunk costs at most one piece; the final `done` event
                # carries the stored text, so every client agrees on what was said.
                result.malformed_chunks += 1
                logger.warning(
                    "skipped a malformed chunk from the model API: %.200r",
                    redact(data, self._api_key),
                )
                continue
            if "error" in chunk:
                message = _error_message(json.dumps(chunk).encode()) or "error in stream"
                raise LLMError("provider_error", message, permanent=False)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                result.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
                result.completion_tokens = _int_or_none(usage.get("completion_tokens"))
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    continue
                piece = delta.get("content")
                if isinstance(piece, str):
                    # What streams is what is stored: PostgreSQL refuses NUL and lone
                    # surrogates, so they never reach the visitor either.
                    piece = made_storable(piece)
                names = _tool_names(delta.get("tool_calls"))
                if (isinstance(piece, str) and piece) or names:
                    if result.time_to_first_token is None:
                        result.time_to_first_token = time.monotonic() - started
                        # From here on, only the per-read timeout applies.
                        first_token_deadline.reschedule(None)
                result.tool_calls.extend(names)
                if isinstance(piece, str) and piece:
                    result.pieces.append(piece)
                    on_piece(piece)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
        if not done and result.finish_reason is None:
            raise httpx.RemoteProtocolError("stream ended without [DONE]")
        result.text = "".join(result.pieces)


def _tool_names(calls: object) -> list[str]:
    """Tool names in a streamed delta (a name arrives once, in a call's first chunk)."""
    if not isinstance(calls, list):
        return []
    names = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and 0 < len(name) <= 64:
            names.append(name)
    return names


def _retry_after(headers: httpx.Headers) -> float | None:
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            return max(0.0, parsed.timestamp() - time.time())
    return None


REDACTED = "[redacted]"


def redact(text: str, *secrets: str) -> str:
    """`text` without any of `secrets`, as written or URL- or JSON-escaped."""
    for secret in secrets:
        if len(secret) < 8:
            continue  # too short to tell from ordinary text (and no real key is)
        for form in {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}:
            text = text.replace(form, REDACTED)
    return text


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:300]
        if isinstance(error, str):
            return error[:300]
    return ""


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
