"""Scripted OpenAI-compatible server: a stand-in for a model and a moderation API.

It speaks real HTTP/1.1 (keep-alive, chunked transfer encoding) and real
server-sent events on loopback, so the code under test exercises its actual HTTP
client, timeouts and SSE parser. What each response looks like -- tokens, pacing,
errors, stalls, broken streams -- is decided by a :class:`Script`.

In tests::

    from tests.scripted_llm import Script, ScriptedLLMServer, default_reply_tokens

    with ScriptedLLMServer(default=Script(token_interval=0.01)) as llm:
        llm.enqueue(Script(status=429, headers={"Retry-After": "1"}))
        llm.enqueue(Script(tokens=["Hel", "lo"]), match="greet me")
        ...  # point the client under test at llm.base_url
        llm.wait_for_requests(2, timeout=5)
        assert llm.requests[0]["json"]["stream"] is True

Queued scripts are used once each, in FIFO order; a script enqueued with
``match`` only serves a request whose last user message contains that substring.
When no queued script is eligible the ``default`` script answers.

Moderation works the same way with :class:`ModerationScript`, plus rules that hold
until ``clear()``::

    llm.moderation_rules.append(("BADWORD", ["harassment"]))  # flag any input containing it
    llm.enqueue_moderation(ModerationScript(status=500))  # the next check fails
    llm.enqueue_moderation(ModerationScript(delay=10), match="slow")
    llm.moderation_default = ModerationScript(flagged_categories=["hate"])

As a process, for benchmarks::

    python -m tests.scripted_llm --port 0 --first-token-delay 0.2 \\
        --tokens-per-second 50 --reply-words 100 [--reply-sentences]

prints ``ready http://127.0.0.1:PORT/v1`` once listening and serves the default
script until SIGINT/SIGTERM. ``--reply-sentences`` streams ordinary support
sentences (:func:`support_reply_tokens`) instead of ``w0 w1 ...``.

Endpoints: ``POST /v1/chat/completions`` (streaming and not, optionally ending in
a tool call), ``POST /v1/moderations`` (``input`` a string or a list of strings) and
``GET /v1/models``; anything else is 404.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

MAX_BODY_BYTES = 8 * 1024 * 1024
# Bounds the request line plus headers (asyncio's StreamReader.readuntil limit).
MAX_HEAD_BYTES = 64 * 1024
# The default listen backlog (100) is too small for hundreds of clients connecting
# at once: overflowing SYNs are retried after ~1 s, which would wreck benchmarks.
LISTEN_BACKLOG = 2048

_COMPACT = (",", ":")

# The categories OpenAI's omni-moderation models report for every input.
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
FLAGGED_SCORE = 0.9
CLEAN_SCORE = 0.0001


def default_reply_tokens(n: int) -> list[str]:
    """Tokens of the default reply: ``["w0", " w1", ..., " w{n-1}"]``."""
    return [f"w{i}" if i == 0 else f" w{i}" for i in range(n)]


# An ordinary support answer. The moderation gate releases text a sentence at a time,
# so measuring it needs real sentence ends; "w0 w1 ..." would be one long window.
# 100 words, so the benchmarks' default reply is the whole answer. Every sentence
# passes the offline moderator (benchmarks/moderation.py checks it before measuring).
SUPPORT_REPLY_SENTENCES = (
    "Thanks for getting in touch, and I'm sorry that your order has not arrived yet.",
    "I can see that it left our warehouse on Monday and is now with the courier.",
    "Deliveries to your area usually take three to five working days after dispatch.",
    "You can follow the parcel at any time with the tracking link in your confirmation email.",
    "If it has still not arrived by Friday, reply here and we will send a replacement.",
    "It is also worth asking your neighbours, as couriers sometimes leave parcels next door.",
    "Is there anything else I can help you with today?",
)


def support_reply_tokens(n: int) -> list[str]:
    """``n`` word tokens of :data:`SUPPORT_REPLY_SENTENCES` (repeated as needed), ending
    a sentence: ``["Thanks", " for", " getting", ...]``."""
    words = " ".join(SUPPORT_REPLY_SENTENCES).split()
    tokens = [words[i % len(words)] for i in range(n)]
    if tokens and not tokens[-1].endswith((".", "?", "!")):
        # A reply cut mid-sentence still ends like one, as a model's would.
        tokens[-1] = tokens[-1].rstrip(",") + "."
    return [token if i == 0 else " " + token for i, token in enumerate(tokens)]


@dataclass
class Script:
    """How to answer one chat completion request.

    ``tokens`` are streamed one per SSE chunk; ``None`` means
    ``default_reply_tokens(reply_words)``. Content chunk ``i`` is sent at
    ``first_token_delay + i * token_interval`` seconds after the response headers.

    ``usage``: ``"auto"`` estimates counts from the request, a dict is sent verbatim,
    ``None`` never sends usage (like llama.cpp's server), neither in the final stream
    chunk (even when ``stream_options.include_usage`` asks for it) nor in a
    non-streamed completion.

    A ``status`` other than 200 answers with ``body`` (a dict is sent as JSON, a str
    as text/plain unless ``headers`` say otherwise; ``None`` gives an OpenAI-style
    error object). ``headers`` are added to every response of this script.

    Failure injection, counted in content chunks already sent:
    ``stall_after`` pauses for ``stall_seconds`` (the socket stays open; a server
    stop ends it) and then resumes at the normal pace; ``disconnect_after`` closes
    the TCP connection without the terminating chunk or ``[DONE]``;
    ``malformed_after`` emits ``data: {this is not json`` and carries on.
    For non-streamed requests, ``stall_after``/``disconnect_after`` apply before the
    response is sent and ``malformed_after`` is ignored.

    ``delay_headers`` sleeps before the status line, emulating a slow first byte.

    ``tool_call`` names a function the model calls after its content tokens: a
    streamed reply then sends the call's id and name in one chunk, its
    ``tool_call_arguments`` in one or two more, and finishes with ``"tool_calls"``
    instead of ``finish_reason``; a non-streamed one carries ``message.tool_calls``.
    """

    tokens: list[str] | None = None
    reply_words: int = 20
    first_token_delay: float = 0.0
    token_interval: float = 0.0
    usage: dict[str, Any] | Literal["auto"] | None = "auto"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | str | None = None
    stall_after: int | None = None
    stall_seconds: float = 3600.0
    disconnect_after: int | None = None
    malformed_after: int | None = None
    finish_reason: str = "stop"
    delay_headers: float = 0.0
    tool_call: str | None = None
    tool_call_arguments: str = "{}"

    def reply_tokens(self) -> list[str]:
        """The content pieces this script streams."""
        if self.tokens is None:
            return default_reply_tokens(self.reply_words)
        return list(self.tokens)


@dataclass
class ModerationScript:
    """How to answer one moderation request.

    Every input of the request is flagged with ``flagged_categories`` (plus whatever
    the server's ``moderation_rules`` add for that input). ``category_scores`` are
    ``FLAGGED_SCORE`` for flagged categories and ``CLEAN_SCORE`` for the others,
    overridden name by name by ``scores``.

    ``delay`` sleeps before answering. A ``status`` other than 200 answers with an
    OpenAI-style error object; ``body``, when set, is sent verbatim instead of
    either (a dict as JSON, a str as text/plain unless ``headers`` say otherwise), to
    inject malformed answers. ``headers`` are added to the response.
    """

    status: int = 200
    flagged_categories: list[str] = field(default_factory=list)
    scores: dict[str, float] | None = None
    delay: float = 0.0
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class RecordedRequest(TypedDict):
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    received_at: float


class _ProtocolError(Exception):
    """The request cannot be parsed; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """Read one request; ``None`` when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _ProtocolError(400, "incomplete request head") from None
        return None  # an idle keep-alive connection was closed: the normal way out
    except asyncio.LimitOverrunError:
        raise _ProtocolError(431, "request head too large") from None

    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _ProtocolError(400, "malformed request line")
    method, target, version = parts

    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()

    if "transfer-encoding" in headers:
        # Real clients (httpx, openai) send Content-Length for JSON bodies.
        raise _ProtocolError(411, "chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _ProtocolError(400, "invalid Content-Length") from None
    if length < 0:
        raise _ProtocolError(400, "invalid Content-Length")
    if length > MAX_BODY_BYTES:
        raise _ProtocolError(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
    try:
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        return None
    return _Request(method, target.split("?", 1)[0], version, headers, body)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _merge_headers(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """``base`` overridden by ``extra``, comparing names case-insensitively."""
    overridden = {name.lower() for name in extra}
    merged = {k: v for k, v in base.items() if k.lower() not in overridden}
    merged.update(extra)
    return merged


def _script_headers(headers: dict[str, str]) -> dict[str, str]:
    """A script's extra headers minus framing ones, which must match what is actually sent."""
    return {
        k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")
    }


def _response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _full_response(
    status: int,
    body: dict[str, Any] | str,
    *,
    keep_alive: bool,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A complete response with a Content-Length body."""
    if isinstance(body, str):
        payload, content_type = body.encode(), "text/plain; charset=utf-8"
    else:
        payload, content_type = json.dumps(body).encode(), "application/json"
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(payload)),
        "Connection": "keep-alive" if keep_alive else "close",
    }
    extra = _script_headers(extra_headers or {})
    return _response_head(status, _merge_headers(headers, extra)) + payload


def _error_body(status: int, message: str) -> dict[str, Any]:
    """An error object shaped like OpenAI's."""
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _chunk(data: bytes) -> bytes:
    """Frame ``data`` as one HTTP/1.1 chunk."""
    return b"%X\r\n%s\r\n" % (len(data), data)


def _text_of(content: Any) -> str:
    """Text of a message's content, either a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _messages(payload: dict[str, Any]) -> list[dict[str, Any]]:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def _last_user_text(payload: dict[str, Any]) -> str | None:
    for message in reversed(_messages(payload)):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return None


def _moderation_inputs(payload: Any) -> list[str] | None:
    """The texts to moderate, or ``None`` when ``input`` is neither a string nor strings."""
    if not isinstance(payload, dict):
        return None
    value = payload.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    return None


def _moderation_result(
    script: ModerationScript, text: str, rules: list[tuple[str, list[str]]]
) -> dict[str, Any]:
    flagged = list(script.flagged_categories)
    flagged += [name for substring, names in rules if substring in text for name in names]
    flagged = list(dict.fromkeys(flagged))
    categories = {name: name in flagged for name in MODERATION_CATEGORIES}
    categories.update((name, True) for name in flagged)
    scores = {name: FLAGGED_SCORE if hit else CLEAN_SCORE for name, hit in categories.items()}
    if script.scores:
        scores.update(script.scores)
    return {"flagged": bool(flagged), "categories": categories, "category_scores": scores}


def _tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _argument_pieces(arguments: str) -> list[str]:
    """The arguments string in one or two pieces, as a model streams them."""
    if len(arguments) < 2:
        return [arguments]
    middle = len(arguments) // 2
    return [arguments[:middle], arguments[middle:]]


def _usage_for(script: Script, payload: dict[str, Any], tokens: list[str]) -> dict[str, Any] | None:
    if script.usage != "auto":
        return script.usage
    # A whitespace word count is close enough to a token count for tests and benchmarks.
    prompt = sum(len(_text_of(m.get("content")).split()) for m in _messages(payload))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(tokens),
        "total_tokens": prompt + len(tokens),
    }


class _StreamEncoder:
    """Renders SSE events for one completion.

    The envelope is the same for every chunk, so it is serialised once and each
    token costs one tiny ``json.dumps``: that keeps hundreds of concurrent
    streams at tens of tokens per second within one core.
    """

    def __init__(self, completion_id: str, created: int, model: Any) -> None:
        self._envelope = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        head = json.dumps(self._envelope, separators=_COMPACT)[:-1]
        self._content_prefix = (head + ',"choices":[{"index":0,"delta":{"content":').encode()
        self._content_suffix = b'},"finish_reason":null}]}\n\n'

    def event(self, **fields: Any) -> bytes:
        data = json.dumps({**self._envelope, **fields}, separators=_COMPACT)
        return _chunk(b"data: " + data.encode() + b"\n\n")

    def content(self, token: str) -> bytes:
        data = self._content_prefix + json.dumps(token).encode() + self._content_suffix
        return _chunk(b"data: " + data)

    def tool_call(self, name: str, arguments: str) -> bytes:
        """The chunks of one streamed tool call: id and name, then the arguments."""
        opening = {
            "index": 0,
            "id": _tool_call_id(),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events = [self._delta({"tool_calls": [opening]})]
        for piece in _argument_pieces(arguments):
            events.append(
                self._delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            )
        return b"".join(events)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self.event(choices=[{"index": 0, "delta": delta, "finish_reason": None}])


_MALFORMED_EVENT = _chunk(b"data: {this is not json\n\n")
_DONE_AND_END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class ScriptedLLMServer:
    """An OpenAI-compatible server on 127.0.0.1 whose replies follow :class:`Script`\\ s.

    ``start()`` runs its event loop in a daemon thread; every other method is
    thread-safe and meant to be called from the test's thread.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        default: Script | None = None,
        port: int = 0,
        *,
        moderation_default: ModerationScript | None = None,
    ) -> None:
        self.default = default if default is not None else Script()
        self.moderation_default = (
            moderation_default if moderation_default is not None else ModerationScript()
        )
        # (substring, categories): any moderated input containing the substring is flagged.
        self.moderation_rules: list[tuple[str, list[str]]] = []
        self.port = port
        self._cond = threading.Condition()
        self._queue: list[tuple[Script, str | None]] = []
        self._moderation_queue: list[tuple[ModerationScript, str | None]] = []
        self._requests: list[RecordedRequest] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._startup_error: Exception | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- control from the test thread -------------------------------------------------

    def start(self) -> ScriptedLLMServer:
        """Listen and serve in a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="scripted-llm", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (including stalled ones)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop already finished
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def enqueue(self, script: Script, match: str | None = None) -> None:
        """Queue ``script`` for one request (whose last user message contains ``match``)."""
        with self._cond:
            self._queue.append((script, match))

    def enqueue_moderation(self, script: ModerationScript, match: str | None = None) -> None:
        """Queue ``script`` for one moderation request (with an input containing ``match``)."""
        with self._cond:
            self._moderation_queue.append((script, match))

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far (every path), oldest first."""
        with self._cond:
            return list(self._requests)

    def clear(self) -> None:
        """Forget queued scripts, moderation rules and recorded requests."""
        with self._cond:
            self._queue.clear()
            self._moderation_queue.clear()
            # A new list, so a list a test assigned (perhaps a shared constant) is not emptied.
            self.moderation_rules = []
            self._requests.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were received; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self._requests)}")
            return list(self._requests)

    # -- the event loop side ----------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except Exception as exc:
            if ready.is_set():
                raise  # a failure while serving: the thread's excepthook reports it
            self._startup_error = exc  # start() re-raises it in the caller's thread
        finally:
            ready.set()  # never leave start() waiting, whatever went wrong

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._handle_connection,
            self.host,
            self.port,
            limit=MAX_HEAD_BYTES,
            backlog=LISTEN_BACKLOG,
        )
        self.port = server.sockets[0].getsockname()[1]
        ready.set()

        await self._stopping.wait()
        server.close()
        # Let connections accepted just before close() register their handler task.
        await asyncio.sleep(0)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _ProtocolError as exc:
                    # The rest of the stream cannot be trusted, so answer and hang up.
                    writer.write(
                        _full_response(
                            exc.status, _error_body(exc.status, str(exc)), keep_alive=False
                        )
                    )
                    await writer.drain()
                    return
                if request is None or not await self._dispatch(request, writer):
                    return
        except ConnectionError:
            pass  # the client went away mid-response; nothing left to do
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Ending normally keeps asyncio's stream
            # callback (which calls task.exception() on 3.11) from logging an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    def _record(self, request: _Request, payload: Any) -> None:
        record: RecordedRequest = {
            "method": request.method,
            "path": request.path,
            "headers": request.headers,
            "json": payload,
            "received_at": time.monotonic(),
        }
        with self._cond:
            self._requests.append(record)
            self._cond.notify_all()

    def _take_script(self, payload: dict[str, Any]) -> Script:
        text = _last_user_text(payload)
        with self._cond:
            for index, (script, match) in enumerate(self._queue):
                if match is None or (text is not None and match in text):
                    del self._queue[index]
                    return script
            return self.default

    def _take_moderation_script(self, inputs: list[str]) -> ModerationScript:
        with self._cond:
            for index, (script, match) in enumerate(self._moderation_queue):
                if match is None or any(match in text for text in inputs):
                    del self._moderation_queue[index]
                    return script
            return self.moderation_default

    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection may serve another."""
        keep_alive = request.keep_alive
        payload: Any
        try:
            payload = json.loads(request.body) if request.body else None
        except ValueError:
            payload = None  # recorded as such; a chat completion then gets a 400
        self._record(request, payload)

        if request.method == "POST" and request.path == "/v1/chat/completions":
            if not isinstance(payload, dict):
                body = _error_body(400, "request body must be a JSON object")
                writer.write(_full_response(400, body, keep_alive=keep_alive))
                await writer.drain()
                return keep_alive
            return await self._complete(self._take_script(payload), payload, writer, keep_alive)

        if request.method == "POST" and request.path == "/v1/moderations":
            inputs = _moderation_inputs(payload)
            if inputs is None:
                body = _error_body(400, "input must be a string or a list of strings")
                writer.write(_full_response(400, body, keep_alive=keep_alive))
                await writer.drain()
                return keep_alive
            script = self._take_moderation_script(inputs)
            return await self._moderate(script, payload, inputs, writer, keep_alive)

        if request.method == "GET" and request.path == "/v1/models":
            models = {
                "object": "list",
                "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}],
            }
            writer.write(_full_response(200, models, keep_alive=keep_alive))
        else:
            body = _error_body(404, f"no route for {request.method} {request.path}")
            writer.write(_full_response(404, body, keep_alive=keep_alive))
        await writer.drain()
        return keep_alive

    async def _moderate(
        self,
        script: ModerationScript,
        payload: dict[str, Any],
        inputs: list[str],
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        if script.delay > 0:
            await asyncio.sleep(script.delay)
        body: dict[str, Any] | str
        if script.body is not None:
            body = script.body
        elif script.status != 200:
            body = _error_body(script.status, f"scripted {script.status} {_reason(script.status)}")
        else:
            with self._cond:
                rules = list(self.moderation_rules)
            body = {
                "id": f"modr-{uuid.uuid4().hex[:24]}",
                "model": payload.get("model") or "omni-moderation-latest",
                "results": [_moderation_result(script, text, rules) for text in inputs],
            }
        writer.write(
            _full_response(script.status, body, keep_alive=keep_alive, extra_headers=script.headers)
        )
        await writer.drain()
        return keep_alive

    async def _complete(
        self,
        script: Script,
        payload: dict[str, Any],
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        if script.delay_headers > 0:
            await asyncio.sleep(script.delay_headers)

        if script.status != 200:
            body = script.body
            if body is None:
                body = _error_body(
                    script.status, f"scripted {script.status} {_reason(script.status)}"
                )
            writer.write(
                _full_response(
                    script.status, body, keep_alive=keep_alive, extra_headers=script.headers
                )
            )
            await writer.drain()
            return keep_alive

        tokens = script.reply_tokens()
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = payload.get("model") or "scripted"
        usage = _usage_for(script, payload, tokens)

        if payload.get("stream"):
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            encoder = _StreamEncoder(completion_id, created, model)
            return await self._stream(
                script, tokens, encoder, usage if include_usage else None, writer, keep_alive
            )

        # Take as long as the streamed equivalent would to deliver its last token.
        generation = script.first_token_delay + max(len(tokens) - 1, 0) * script.token_interval
        if generation > 0:
            await asyncio.sleep(generation)
        if script.stall_after is not None:
            await asyncio.sleep(script.stall_seconds)
        if script.disconnect_after is not None:
            return False  # the caller closes the socket without a response
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
        finish_reason = script.finish_reason
        if script.tool_call is not None:
            # Like OpenAI: a reply that is only a tool call has no content at all.
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {
                    "id": _tool_call_id(),
                    "type": "function",
                    "function": {"name": script.tool_call, "arguments": script.tool_call_arguments},
                }
            ]
            finish_reason = "tool_calls"
        completion: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        }
        if usage is not None:
            completion["usage"] = usage
        writer.write(
            _full_response(200, completion, keep_alive=keep_alive, extra_headers=script.headers)
        )
        await writer.drain()
        return keep_alive

    async def _stream(
        self,
        script: Script,
        tokens: list[str],
        encoder: _StreamEncoder,
        usage: dict[str, Any] | None,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
            "Connection": "keep-alive" if keep_alive else "close",
        }
        writer.write(_response_head(200, _merge_headers(headers, _script_headers(script.headers))))
        opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        writer.write(encoder.event(choices=[opening]))
        await writer.drain()

        loop = asyncio.get_running_loop()
        # Every chunk is due at an absolute time measured from here, so sleep overshoot
        # under load never accumulates across a long reply.
        start = loop.time()
        for sent in range(len(tokens) + 1):
            if script.disconnect_after == sent:
                return False  # the caller closes the socket: no last chunk, no [DONE]
            if script.stall_after == sent:
                stalled_at = loop.time()
                await asyncio.sleep(script.stall_seconds)
                start += loop.time() - stalled_at  # resume at the normal pace, not in a burst
            if script.malformed_after == sent:
                writer.write(_MALFORMED_EVENT)
            if sent == len(tokens):
                break
            delay = start + script.first_token_delay + sent * script.token_interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(encoder.content(tokens[sent]))
            # drain() applies backpressure and raises once the client has gone away.
            await writer.drain()

        tail = b""
        finish_reason = script.finish_reason
        if script.tool_call is not None:
            tail += encoder.tool_call(script.tool_call, script.tool_call_arguments)
            finish_reason = "tool_calls"
        tail += encoder.event(choices=[{"index": 0, "delta": {}, "finish_reason": finish_reason}])
        if usage is not None:
            tail += encoder.event(choices=[], usage=usage)
        writer.write(tail + _DONE_AND_END)
        await writer.drain()
        return keep_alive


def main(argv: list[str] | None = None) -> int:
    """Serve the default script until SIGINT/SIGTERM (for benchmarks)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.scripted_llm",
        description="Scripted OpenAI-compatible Chat Completions server on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="0 streams without pauses (default)"
    )
    parser.add_argument("--reply-words", type=int, default=20)
    parser.add_argument(
        "--reply-sentences",
        action="store_true",
        help="reply with --reply-words words of support sentences instead of w0 w1 ...",
    )
    args = parser.parse_args(argv)

    interval = 1.0 / args.tokens_per_second if args.tokens_per_second > 0 else 0.0
    script = Script(
        tokens=support_reply_tokens(args.reply_words) if args.reply_sentences else None,
        first_token_delay=args.first_token_delay,
        token_interval=interval,
        reply_words=args.reply_words,
    )
    stop = threading.Event()
    # Installed before start() so a signal arriving right after "ready" is not lost.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = ScriptedLLMServer(default=script, port=args.port).start()
    print(f"ready {server.base_url}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
