"""Tests for the scripted OpenAI-compatible server, driven over real HTTP with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.scripted_llm import (
    CLEAN_SCORE,
    FLAGGED_SCORE,
    MODERATION_CATEGORIES,
    SUPPORT_REPLY_SENTENCES,
    ModerationScript,
    Script,
    ScriptedLLMServer,
    default_reply_tokens,
    support_reply_tokens,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def llm() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as server:
        yield server


def chat_body(
    text: str = "hello there", *, stream: bool = True, include_usage: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are a support bot."},
            {"role": "user", "content": text},
        ],
        "stream": stream,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data:`` payloads of an SSE stream, in order, as they arrive."""
    return (line[len("data: ") :] for line in lines if line.startswith("data: "))


def contents(events: Iterable[str]) -> list[str]:
    """Content deltas of parsed chunk events (skipping the role chunk's empty content)."""
    pieces = []
    for event in events:
        if event == "[DONE]":
            continue
        for choice in json.loads(event)["choices"]:
            content = choice["delta"].get("content")
            if content:
                pieces.append(content)
    return pieces


def stream_events(server: ScriptedLLMServer, body: dict[str, Any], **client: Any) -> list[str]:
    with httpx.Client(base_url=server.base_url, **client) as http:
        with http.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["transfer-encoding"] == "chunked"
            return list(sse_data(response.iter_lines()))


def test_streams_each_token_as_its_own_event_in_order_with_usage(llm: ScriptedLLMServer) -> None:
    tokens = ["Hel", "lo", ",", " world", "!"]
    llm.default = Script(tokens=tokens, token_interval=0.04)
    arrivals = []
    with httpx.Client(base_url=llm.base_url) as http:
        with http.stream(
            "POST", "/chat/completions", json=chat_body("one two three", include_usage=True)
        ) as response:
            events = []
            for data in sse_data(response.iter_lines()):
                events.append(data)
                arrivals.append(time.monotonic())

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:6]] == tokens
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:6])
    assert chunks[6]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    # "You are a support bot." (5 words) + "one two three" (3 words).
    assert chunks[7]["choices"] == []
    assert chunks[7]["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "test-model" for c in chunks)
    # Tokens were delivered as they were produced (4 intervals apart), not buffered.
    content_arrivals = arrivals[1:6]
    assert content_arrivals == sorted(content_arrivals)
    assert content_arrivals[-1] - content_arrivals[0] >= 0.15


def test_default_reply_is_reply_words_words(llm: ScriptedLLMServer) -> None:
    llm.default = Script(reply_words=7)
    events = stream_events(llm, chat_body())
    assert contents(events) == default_reply_tokens(7)
    assert "".join(default_reply_tokens(3)) == "w0 w1 w2"


def test_no_usage_chunk_unless_asked(llm: ScriptedLLMServer) -> None:
    events = stream_events(llm, chat_body())
    assert not any("usage" in json.loads(e) for e in events[:-1])


def test_usage_none_sends_no_usage_even_when_asked(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["a", "b"], usage=None)
    events = stream_events(llm, chat_body(include_usage=True))
    assert events[-1] == "[DONE]"
    assert not any("usage" in json.loads(e) for e in events[:-1])
    assert contents(events) == ["a", "b"]


def test_explicit_usage_is_sent_verbatim(llm: ScriptedLLMServer) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "extra": True}
    llm.default = Script(tokens=["a"], usage=usage)
    events = stream_events(llm, chat_body(include_usage=True))
    assert json.loads(events[-2])["usage"] == usage


def test_non_streaming_completion(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["Hi", " there"], finish_reason="length")
    response = httpx.post(f"{llm.base_url}/chat/completions", json=chat_body(stream=False))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "test-model"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 2


def test_429_with_retry_after(llm: ScriptedLLMServer) -> None:
    llm.enqueue(Script(status=429, headers={"Retry-After": "1", "retry-after-ms": "150"}))
    response = httpx.post(f"{llm.base_url}/chat/completions", json=chat_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "150"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    # The queued error was used once; the default script answers the next request.
    assert contents(stream_events(llm, chat_body())) == default_reply_tokens(20)


def test_500_with_custom_bodies(llm: ScriptedLLMServer) -> None:
    llm.enqueue(Script(status=500))
    llm.enqueue(Script(status=502, body="<html>Bad Gateway</html>"))
    with httpx.Client(base_url=llm.base_url) as http:
        first = http.post("/chat/completions", json=chat_body())
        second = http.post("/chat/completions", json=chat_body())
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    assert second.status_code == 502
    assert second.text == "<html>Bad Gateway</html>"
    assert second.headers["content-type"].startswith("text/plain")


def test_stall_trips_the_client_read_timeout(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["a", "b", "c", "d"], stall_after=2)
    received = []
    started = time.monotonic()
    with httpx.Client(base_url=llm.base_url, timeout=httpx.Timeout(5.0, read=0.3)) as http:
        with pytest.raises(httpx.ReadTimeout):
            with http.stream("POST", "/chat/completions", json=chat_body()) as response:
                for data in sse_data(response.iter_lines()):
                    received.append(data)
    assert 0.3 <= time.monotonic() - started < 2
    assert contents(received) == ["a", "b"]
    # Stopping the server (fixture teardown) must not wait for the hour-long stall.


def test_stall_resumes_after_stall_seconds(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["a", "b", "c"], stall_after=1, stall_seconds=0.2)
    started = time.monotonic()
    events = stream_events(llm, chat_body())
    assert time.monotonic() - started >= 0.2
    assert contents(events) == ["a", "b", "c"]
    assert events[-1] == "[DONE]"


def test_disconnect_after_truncates_the_stream(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["a", "b", "c", "d", "e"], disconnect_after=3)
    received = []
    with httpx.Client(base_url=llm.base_url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("POST", "/chat/completions", json=chat_body()) as response:
                for data in sse_data(response.iter_lines()):
                    received.append(data)
    assert contents(received) == ["a", "b", "c"]
    assert "[DONE]" not in received


def test_malformed_line_then_stream_continues(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["a", "b", "c"], malformed_after=2)
    events = stream_events(llm, chat_body())
    # role chunk, a, b, malformed, c, finish chunk, [DONE]
    assert events[3] == "{this is not json"
    assert contents(events[:3] + events[4:]) == ["a", "b", "c"]
    assert events[-1] == "[DONE]"


def test_match_routes_concurrent_requests_to_their_scripts(llm: ScriptedLLMServer) -> None:
    llm.enqueue(Script(tokens=["for alpha"], token_interval=0.05), match="alpha")
    llm.enqueue(Script(tokens=["for beta"], token_interval=0.05), match="beta")

    async def ask(http: httpx.AsyncClient, text: str) -> list[str]:
        async with http.stream("POST", "/chat/completions", json=chat_body(text)) as response:
            return contents(sse_data([line async for line in response.aiter_lines()]))

    async def main() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=llm.base_url) as http:
            # "beta" is asked first although its script is second in the queue.
            return await asyncio.gather(
                ask(http, "question about beta"),
                ask(http, "question about alpha"),
                ask(http, "question about gamma"),
            )

    beta, alpha, gamma = asyncio.run(main())
    assert beta == ["for beta"]
    assert alpha == ["for alpha"]
    assert gamma == default_reply_tokens(20)


def test_match_looks_only_at_the_last_user_message(llm: ScriptedLLMServer) -> None:
    llm.enqueue(Script(tokens=["matched"]), match="refund")
    body = chat_body("and now?")
    body["messages"][1:1] = [
        {"role": "user", "content": "I want a refund"},
        {"role": "assistant", "content": "Sure"},
    ]
    assert contents(stream_events(llm, body)) == default_reply_tokens(20)
    body["messages"][-1]["content"] = [{"type": "text", "text": "refund please"}]
    assert contents(stream_events(llm, body)) == ["matched"]


def test_unmatched_scripts_are_fifo(llm: ScriptedLLMServer) -> None:
    llm.enqueue(Script(tokens=["first"]))
    llm.enqueue(Script(tokens=["second"]))
    assert contents(stream_events(llm, chat_body())) == ["first"]
    assert contents(stream_events(llm, chat_body())) == ["second"]
    assert contents(stream_events(llm, chat_body())) == default_reply_tokens(20)


def test_token_timing(llm: ScriptedLLMServer) -> None:
    llm.default = Script(reply_words=20, token_interval=0.01)
    started = time.monotonic()
    events = stream_events(llm, chat_body())
    elapsed = time.monotonic() - started
    assert contents(events) == default_reply_tokens(20)
    assert 0.19 <= elapsed < 1.0


def test_first_token_delay_and_delay_headers(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["x"], delay_headers=0.15, first_token_delay=0.15)
    with httpx.Client(base_url=llm.base_url) as http:
        started = time.monotonic()
        with http.stream("POST", "/chat/completions", json=chat_body()) as response:
            headers_at = time.monotonic() - started
            first_content_at = None
            for data in sse_data(response.iter_lines()):
                if first_content_at is None and contents([data]):
                    first_content_at = time.monotonic() - started
    assert headers_at >= 0.15
    assert first_content_at is not None and first_content_at >= 0.3


def test_100_concurrent_streams_complete(llm: ScriptedLLMServer) -> None:
    llm.default = Script(reply_words=20, token_interval=0.01, first_token_delay=0.05)
    expected = default_reply_tokens(20)

    async def one(http: httpx.AsyncClient, i: int) -> list[str]:
        async with http.stream("POST", "/chat/completions", json=chat_body(f"q{i}")) as response:
            assert response.status_code == 200
            return contents(sse_data([line async for line in response.aiter_lines()]))

    async def main() -> list[list[str]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=llm.base_url, limits=limits, timeout=10) as http:
            return await asyncio.gather(*(one(http, i) for i in range(100)))

    started = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - started < 5
    assert all(result == expected for result in results)
    assert len(llm.requests) == 100


def test_requests_are_recorded_and_cleared(llm: ScriptedLLMServer) -> None:
    before = time.monotonic()
    httpx.post(
        f"{llm.base_url}/chat/completions",
        json=chat_body(stream=False),
        headers={"Authorization": "Bearer sk-test", "X-Custom": "1"},
    )
    (recorded,) = llm.wait_for_requests(1, timeout=2)
    assert recorded["path"] == "/v1/chat/completions"
    assert recorded["method"] == "POST"
    assert recorded["headers"]["authorization"] == "Bearer sk-test"
    assert recorded["headers"]["x-custom"] == "1"
    assert recorded["json"] == chat_body(stream=False)
    assert before <= recorded["received_at"] <= time.monotonic()

    llm.enqueue(Script(tokens=["queued"]))
    llm.clear()
    assert llm.requests == []
    assert contents(stream_events(llm, chat_body())) == default_reply_tokens(20)
    with pytest.raises(TimeoutError):
        llm.wait_for_requests(2, timeout=0.05)


def test_models_404_and_bad_json(llm: ScriptedLLMServer) -> None:
    with httpx.Client(base_url=llm.base_url) as http:
        models = http.get("/models")
        missing = http.get("/nope")
        bad = http.post(
            "/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"}
        )
    assert models.status_code == 200
    assert models.json()["data"][0]["object"] == "model"
    assert missing.status_code == 404
    assert bad.status_code == 400
    assert "error" in bad.json()


def tool_call_deltas(events: Iterable[str]) -> list[dict[str, Any]]:
    """The ``tool_calls`` entries of parsed chunk events, in order."""
    calls = []
    for event in events:
        if event == "[DONE]":
            continue
        for choice in json.loads(event)["choices"]:
            calls += choice["delta"].get("tool_calls", [])
    return calls


def test_streamed_tool_call_follows_the_content(llm: ScriptedLLMServer) -> None:
    arguments = '{"reason": "wants a person"}'
    llm.default = Script(
        tokens=["One", " moment"],
        tool_call="handoff_to_human",
        tool_call_arguments=arguments,
        finish_reason="length",
    )
    events = stream_events(llm, chat_body(include_usage=True))
    assert events[-1] == "[DONE]"
    assert contents(events) == ["One", " moment"]
    deltas = tool_call_deltas(events)
    opening, *pieces = deltas
    assert opening["index"] == 0
    assert opening["id"].startswith("call_")
    assert opening["type"] == "function"
    assert opening["function"] == {"name": "handoff_to_human", "arguments": ""}
    assert 1 <= len(pieces) <= 2
    assert all(set(p) == {"index", "function"} and p["index"] == 0 for p in pieces)
    assert "".join(p["function"]["arguments"] for p in pieces) == arguments

    chunks = [json.loads(e) for e in events[:-1]]
    with_choices = [c for c in chunks if c["choices"]]
    # The tool call comes after every content chunk; the last chunk finishes with it.
    content_at = max(
        i for i, c in enumerate(with_choices) if c["choices"][0]["delta"].get("content")
    )
    call_at = min(i for i, c in enumerate(with_choices) if "tool_calls" in c["choices"][0]["delta"])
    assert content_at < call_at
    finishes = [c["choices"][0]["finish_reason"] for c in with_choices]
    assert finishes[-1] == "tool_calls"
    assert all(reason is None for reason in finishes[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_streamed_tool_call_without_content_or_arguments(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=[], tool_call="lookup", tool_call_arguments="")
    events = stream_events(llm, chat_body())
    assert contents(events) == []
    opening, *pieces = tool_call_deltas(events)
    assert opening["function"]["name"] == "lookup"
    assert [p["function"]["arguments"] for p in pieces] == [""]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "tool_calls"


def test_non_streamed_tool_call(llm: ScriptedLLMServer) -> None:
    llm.enqueue(Script(tokens=[], tool_call="handoff_to_human", tool_call_arguments='{"a":1}'))
    llm.enqueue(Script(tokens=["Sure."], tool_call="lookup"))
    with httpx.Client(base_url=llm.base_url) as http:
        bare = http.post("/chat/completions", json=chat_body(stream=False)).json()
        mixed = http.post("/chat/completions", json=chat_body(stream=False)).json()
    (choice,) = bare["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "handoff_to_human", "arguments": '{"a":1}'}
    assert mixed["choices"][0]["message"]["content"] == "Sure."
    assert mixed["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": "{}",
    }
    assert mixed["choices"][0]["finish_reason"] == "tool_calls"


def moderate(server: ScriptedLLMServer, text: str | list[str], **json_extra: Any) -> httpx.Response:
    body = {"model": "omni-moderation-latest", "input": text, **json_extra}
    return httpx.post(f"{server.base_url}/moderations", json=body, timeout=10)


def test_moderation_passes_by_default_in_openai_shape(llm: ScriptedLLMServer) -> None:
    response = moderate(llm, "where is my parcel?", model="my-moderator")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["id"].startswith("modr-")
    assert answer["model"] == "my-moderator"
    (result,) = answer["results"]
    assert result["flagged"] is False
    assert result["categories"] == dict.fromkeys(MODERATION_CATEGORIES, False)
    assert result["category_scores"] == dict.fromkeys(MODERATION_CATEGORIES, CLEAN_SCORE)

    (recorded,) = llm.requests
    assert recorded["method"] == "POST"
    assert recorded["path"] == "/v1/moderations"
    assert recorded["json"] == {"model": "my-moderator", "input": "where is my parcel?"}


def test_moderation_script_flags_and_scores(llm: ScriptedLLMServer) -> None:
    llm.enqueue_moderation(
        ModerationScript(
            flagged_categories=["violence", "custom/category"],
            scores={"violence": 0.97, "hate": 0.2},
        )
    )
    (result,) = moderate(llm, "anything").json()["results"]
    assert result["flagged"] is True
    assert {name for name, hit in result["categories"].items() if hit} == {
        "violence",
        "custom/category",
    }
    assert set(MODERATION_CATEGORIES) <= set(result["categories"])
    assert result["category_scores"]["violence"] == 0.97
    assert result["category_scores"]["hate"] == 0.2
    assert result["category_scores"]["custom/category"] == FLAGGED_SCORE
    assert result["category_scores"]["sexual"] == CLEAN_SCORE
    # One-shot: the default answers the next request.
    assert moderate(llm, "anything").json()["results"][0]["flagged"] is False


def test_moderation_match_fifo_and_default(llm: ScriptedLLMServer) -> None:
    llm.enqueue_moderation(ModerationScript(flagged_categories=["hate"]), match="alpha")
    llm.enqueue_moderation(ModerationScript(flagged_categories=["sexual"]))
    llm.enqueue_moderation(ModerationScript(flagged_categories=["illicit"]))
    llm.moderation_default = ModerationScript(flagged_categories=["violence"])

    def flagged(text: str) -> list[str]:
        (result,) = moderate(llm, text).json()["results"]
        return [name for name, hit in result["categories"].items() if hit]

    # The first unmatched script answers "gamma"; the "alpha" one waits for its input.
    assert flagged("gamma") == ["sexual"]
    assert flagged("about alpha") == ["hate"]
    assert flagged("delta") == ["illicit"]
    assert flagged("epsilon") == ["violence"]


def test_moderation_rules_persist_until_clear(llm: ScriptedLLMServer) -> None:
    llm.moderation_rules.append(("BADWORD", ["harassment"]))
    llm.moderation_rules.append(("kill", ["violence", "harassment"]))
    llm.enqueue_moderation(ModerationScript(flagged_categories=["hate"]))

    results = moderate(llm, ["fine", "a BADWORD", "BADWORD, kill"]).json()["results"]
    hits = [sorted(n for n, hit in r["categories"].items() if hit) for r in results]
    # One result per input; the queued script applies to every input of its request.
    assert hits == [["hate"], ["harassment", "hate"], ["harassment", "hate", "violence"]]
    assert [r["flagged"] for r in results] == [True, True, True]

    for _ in range(2):
        (result,) = moderate(llm, "BADWORD again").json()["results"]
        assert result["flagged"] is True
        assert result["categories"]["harassment"] is True
        assert result["category_scores"]["harassment"] == FLAGGED_SCORE
    assert moderate(llm, "clean").json()["results"][0]["flagged"] is False

    llm.enqueue_moderation(ModerationScript(flagged_categories=["hate"]))
    llm.clear()
    assert llm.moderation_rules == []
    assert llm.requests == []
    assert moderate(llm, "BADWORD").json()["results"][0]["flagged"] is False


def test_moderation_errors_delay_and_verbatim_bodies(llm: ScriptedLLMServer) -> None:
    llm.enqueue_moderation(ModerationScript(status=429, headers={"Retry-After": "2"}))
    llm.enqueue_moderation(ModerationScript(status=503))
    llm.enqueue_moderation(ModerationScript(body="{not json", headers={"X-Test": "1"}))
    llm.enqueue_moderation(ModerationScript(body={"results": "nope"}))
    llm.enqueue_moderation(ModerationScript(delay=0.3))

    limited = moderate(llm, "x")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    unavailable = moderate(llm, "x")
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["type"] == "server_error"
    broken = moderate(llm, "x")
    assert broken.status_code == 200
    assert broken.text == "{not json"
    assert broken.headers["x-test"] == "1"
    assert moderate(llm, "x").json() == {"results": "nope"}
    started = time.monotonic()
    assert moderate(llm, "x").json()["results"][0]["flagged"] is False
    assert time.monotonic() - started >= 0.3


def test_moderation_rejects_bad_input(llm: ScriptedLLMServer) -> None:
    with httpx.Client(base_url=llm.base_url) as http:
        missing = http.post("/moderations", json={"model": "m"})
        numbers = http.post("/moderations", json={"model": "m", "input": [1, 2]})
        bad_json = http.post("/moderations", content=b"{nope")
    assert [r.status_code for r in (missing, numbers, bad_json)] == [400, 400, 400]
    assert "error" in missing.json()
    assert len(llm.requests) == 3


def raw_exchange(port: int, request: bytes, until: bytes) -> bytes:
    """Send raw bytes and read until ``until`` has been seen (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while until not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received


def test_wire_format_and_keep_alive(llm: ScriptedLLMServer) -> None:
    llm.default = Script(tokens=["a"], usage=None)
    body = json.dumps(chat_body()).encode()
    post = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    # Two requests pipelined on one connection: both are answered, in order.
    received = raw_exchange(llm.port, post + get, until=b'"owned_by"')
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"Content-Type: text/event-stream" in head

    events = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        chunk, rest = rest[:size], rest[size + 2 :]
        if size == 0:
            break
        events.append(chunk)
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    assert contents([e[6:-2].decode() for e in events]) == ["a"]
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length:" in rest


def test_oversized_body_is_rejected_with_413(llm: ScriptedLLMServer) -> None:
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
        8 * 1024 * 1024 + 1
    )
    received = raw_exchange(llm.port, request, until=b"}}")
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in received


@contextlib.contextmanager
def command_line_server(*flags: str) -> Iterator[str]:
    """``python -m tests.scripted_llm --port 0 FLAGS``; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.scripted_llm", "--port", "0", *flags],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        word, base_url = line.split(" ")
        assert word == "ready"
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        yield base_url
        process.terminate()
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def streamed_contents(base_url: str) -> list[str]:
    with httpx.Client(base_url=base_url) as http:
        with http.stream("POST", "/chat/completions", json=chat_body()) as response:
            return contents(sse_data(response.iter_lines()))


def test_command_line_server() -> None:
    with command_line_server("--tokens-per-second", "200", "--reply-words", "5") as base_url:
        assert streamed_contents(base_url) == default_reply_tokens(5)


def test_command_line_reply_sentences() -> None:
    flags = ("--tokens-per-second", "500", "--reply-words", "30", "--reply-sentences")
    with command_line_server(*flags) as base_url:
        tokens = streamed_contents(base_url)
    assert tokens == support_reply_tokens(30)
    text = "".join(tokens)
    # Words, one per token, from the support sentences, cut to end like a sentence.
    assert len(tokens) == 30 and all(t.startswith(" ") for t in tokens[1:])
    assert text.startswith(SUPPORT_REPLY_SENTENCES[0] + " I can see")
    assert text.endswith(".")


def test_support_reply_tokens_cover_the_sentences_and_repeat() -> None:
    whole = " ".join(SUPPORT_REPLY_SENTENCES)
    assert "".join(support_reply_tokens(len(whole.split()))) == whole
    assert "".join(support_reply_tokens(3)) == "Thanks for getting."
    longer = "".join(support_reply_tokens(len(whole.split()) + 2))
    assert longer == whole + " Thanks for."
    assert support_reply_tokens(0) == []
