"""The moderation API client, against the scripted server over real HTTP (no database)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conversations.llm.moderation import ModerationClient
from conversations.moderation.verdict import FLAGGED, PASSED, ModerationUnavailable, Verdict
from tests.scripted_llm import (
    CLEAN_SCORE,
    FLAGGED_SCORE,
    MODERATION_CATEGORIES,
    ModerationScript,
    ScriptedLLMServer,
)

API_KEY = "sk-moderation-test-key"


@pytest.fixture
def llm() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as server:
        yield server


def make_client(server: ScriptedLLMServer, **overrides: Any) -> ModerationClient:
    options: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": API_KEY,
        "model": "omni-moderation-latest",
        "timeout": 3.0,
        "max_retries": 2,
    }
    options.update(overrides)
    return ModerationClient(**options)


def check(client: ModerationClient, text: str = "where is my parcel?") -> Verdict:
    async def run() -> Verdict:
        try:
            return await client.check(text)
        finally:
            await client.aclose()

    return asyncio.run(run())


def unavailable(client: ModerationClient, text: str = "hello") -> ModerationUnavailable:
    with pytest.raises(ModerationUnavailable) as caught:
        check(client, text)
    return caught.value


def test_passes(llm: ScriptedLLMServer) -> None:
    verdict = check(make_client(llm))
    assert verdict.status == PASSED
    assert not verdict.flagged
    assert verdict.categories == ()
    assert verdict.scores == dict.fromkeys(MODERATION_CATEGORIES, CLEAN_SCORE)
    assert verdict.provider == "api:omni-moderation-latest"
    assert 0 <= verdict.latency_ms < 3000
    assert verdict.detail == ""


def test_flags_with_categories_and_scores(llm: ScriptedLLMServer) -> None:
    llm.moderation_rules.append(("BADWORD", ["violence", "harassment/threatening"]))
    llm.moderation_default = ModerationScript(scores={"violence": 0.97})
    verdict = check(make_client(llm), "you BADWORD")
    assert verdict.status == FLAGGED
    assert verdict.categories == ("harassment/threatening", "violence")
    assert verdict.urgent
    assert verdict.scores["violence"] == 0.97
    assert verdict.scores["harassment/threatening"] == FLAGGED_SCORE
    assert verdict.scores["hate"] == CLEAN_SCORE
    assert all(type(score) is float for score in verdict.scores.values())
    assert check(make_client(llm), "a kind word").status == PASSED


def test_500_then_success_is_retried(llm: ScriptedLLMServer) -> None:
    llm.enqueue_moderation(ModerationScript(status=500))
    llm.enqueue_moderation(ModerationScript(status=503))
    verdict = check(make_client(llm, max_retries=2))
    assert verdict.status == PASSED
    assert len(llm.requests) == 3


def test_500_always_is_server_error(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(status=500)
    error = unavailable(make_client(llm, max_retries=2))
    assert error.code == "server_error"
    assert "HTTP 500" in str(error)
    assert len(llm.requests) == 3


def test_no_retries_when_max_retries_is_zero(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(status=502)
    assert unavailable(make_client(llm, max_retries=0)).code == "server_error"
    assert len(llm.requests) == 1


def test_delay_longer_than_the_timeout(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(delay=10)
    client = make_client(llm, timeout=0.5, max_retries=3)
    started = time.monotonic()
    error = unavailable(client)
    elapsed = time.monotonic() - started
    assert error.code == "timeout"
    assert 0.5 <= elapsed < 1.5


def test_retries_are_bounded_by_the_timeout_too(llm: ScriptedLLMServer) -> None:
    # Each answer takes 0.5 s (backoff is at most 0.15 s before the first retry): the
    # second attempt would end past the 0.8 s budget.
    llm.moderation_default = ModerationScript(status=500, delay=0.5)
    started = time.monotonic()
    error = unavailable(make_client(llm, timeout=0.8, max_retries=5))
    assert error.code == "timeout"
    assert time.monotonic() - started < 1.8


def test_401_is_auth_and_not_retried(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(status=401)
    error = unavailable(make_client(llm))
    assert error.code == "auth"
    assert API_KEY not in str(error)
    assert len(llm.requests) == 1


def test_other_4xx_is_bad_request_and_not_retried(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(status=400, body={"error": {"message": "too long"}})
    error = unavailable(make_client(llm))
    assert error.code == "bad_request"
    assert "too long" in str(error)
    assert len(llm.requests) == 1


def test_429_honours_retry_after_that_fits(llm: ScriptedLLMServer) -> None:
    llm.enqueue_moderation(ModerationScript(status=429, headers={"retry-after-ms": "300"}))
    started = time.monotonic()
    assert check(make_client(llm)).status == PASSED
    assert time.monotonic() - started >= 0.3
    assert len(llm.requests) == 2


def test_429_with_retry_after_past_the_deadline_fails_at_once(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(status=429, headers={"Retry-After": "30"})
    started = time.monotonic()
    error = unavailable(make_client(llm, timeout=3))
    assert error.code == "rate_limited"
    assert time.monotonic() - started < 1
    assert len(llm.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        {"id": "modr-1"},
        {"results": []},
        {"results": ["x"]},
        {"results": [{"flagged": "yes", "categories": {}, "category_scores": {}}]},
        {"results": [{"flagged": True, "categories": [], "category_scores": {}}]},
        {"results": [{"flagged": True, "categories": {}, "category_scores": 0.5}]},
    ],
)
def test_malformed_answers_are_bad_response(
    llm: ScriptedLLMServer, body: dict[str, Any] | str
) -> None:
    llm.moderation_default = ModerationScript(body=body)
    assert unavailable(make_client(llm)).code == "bad_response"
    assert len(llm.requests) == 1


def test_oversized_answer_is_bad_response(llm: ScriptedLLMServer) -> None:
    llm.moderation_default = ModerationScript(body="x" * (1024 * 1024 + 1))
    error = unavailable(make_client(llm))
    assert error.code == "bad_response"
    assert "larger than" in str(error)


def test_scores_are_sanitised(llm: ScriptedLLMServer) -> None:
    scores: dict[str, Any] = {f"extra-{i:02d}": i / 100 for i in range(60)}
    scores.update({"x" * 61: 0.99, "as-text": "0.5", "as-bool": True, "as-null": None, "int": 1})
    body = {
        "results": [
            {
                "flagged": True,
                "categories": {"hate": True, "sexual": False, "odd": 1, "y" * 61: True},
                "category_scores": scores,
            }
        ]
    }
    llm.moderation_default = ModerationScript(body=body)
    verdict = check(make_client(llm))
    assert verdict.status == FLAGGED
    assert verdict.categories == ("hate",)
    assert len(verdict.scores) == 50
    assert verdict.scores["int"] == 1.0 and type(verdict.scores["int"]) is float
    assert all(type(score) is float and len(name) <= 60 for name, score in verdict.scores.items())
    # The 50 highest scores are kept.
    assert "extra-59" in verdict.scores and "extra-00" not in verdict.scores


def test_request_body_and_authorization_header(llm: ScriptedLLMServer) -> None:
    check(make_client(llm, model="text-moderation-007"), "is this ok?")
    (recorded,) = llm.requests
    assert recorded["method"] == "POST"
    assert recorded["path"] == "/v1/moderations"
    assert recorded["json"] == {"model": "text-moderation-007", "input": "is this ok?"}
    assert recorded["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert recorded["headers"]["content-type"] == "application/json"


def test_no_authorization_header_without_a_key(llm: ScriptedLLMServer) -> None:
    check(make_client(llm, api_key=""))
    assert "authorization" not in llm.requests[0]["headers"]


def test_provider_is_truncated_and_key_kept_out_of_repr(llm: ScriptedLLMServer) -> None:
    client = make_client(llm, model="m" * 80)
    verdict = check(client)
    assert verdict.provider == ("api:" + "m" * 80)[:50]
    assert API_KEY not in repr(client)


def test_connection_refused_is_connect(llm: ScriptedLLMServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ModerationClient(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="", model="m", timeout=3, max_retries=1
    )
    started = time.monotonic()
    assert unavailable(client).code == "connect"
    assert time.monotonic() - started < 2


def test_one_pooled_client_per_loop(llm: ScriptedLLMServer) -> None:
    client = make_client(llm)

    async def run() -> list[Verdict]:
        try:
            verdicts = [await client.check(f"message {i}") for i in range(3)]
            assert len(client._clients) == 1
            return verdicts
        finally:
            await client.aclose()

    assert [v.status for v in asyncio.run(run())] == [PASSED] * 3
    assert len(llm.requests) == 3


def test_not_configured() -> None:
    with pytest.raises(ModerationUnavailable) as caught:
        ModerationClient(base_url="", api_key="", model="m", timeout=1, max_retries=0)
    assert caught.value.code == "not_configured"


def test_from_settings(settings: Any) -> None:
    settings.MODERATION_BASE_URL = "http://127.0.0.1:9/v1"
    settings.MODERATION_API_KEY = "sk-x"
    settings.MODERATION_MODEL = "omni-moderation-2024-09-26"
    settings.MODERATION_TIMEOUT = 2.5
    settings.MODERATION_MAX_RETRIES = 3
    client = ModerationClient.from_settings()
    assert client.url == "http://127.0.0.1:9/v1/moderations"
    assert client.model == "omni-moderation-2024-09-26"
    assert client.timeout == 2.5
    assert client.max_retries == 3
    assert client.name == "api"
