"""Faults of the model API, as the visitor sees them and as the reply is stored.

The servers run with TEST_SERVER_SETTINGS (tests/conftest.py): a 2 s read timeout,
a 4 s first-token deadline, 2 retries and at most 3 s of waiting before a retry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from conversations.models import Message
from tests.conftest import TEST_SERVER_SETTINGS
from tests.scripted_llm import Script
from tests.visitor import Visitor, assembled, deltas_of, run

READ_TIMEOUT = float(TEST_SERVER_SETTINGS["LLM_READ_TIMEOUT"])
FIRST_TOKEN_TIMEOUT = float(TEST_SERVER_SETTINGS["LLM_FIRST_TOKEN_TIMEOUT"])
MAX_RETRIES = int(TEST_SERVER_SETTINGS["LLM_MAX_RETRIES"])

TOKENS = ["Your", " order", " ships", " on", " Monday", ",", " tracking", " follows", "."]
USAGE = {"prompt_tokens": 42, "completion_tokens": len(TOKENS), "total_tokens": 42 + len(TOKENS)}


@dataclass
class Turn:
    """One question and everything the visitor saw until its reply was over."""

    events: list[dict[str, Any]]
    done: dict[str, Any]
    elapsed: float  # seconds from sending the question to the reply's `done`

    @property
    def reply_id(self) -> str:
        return self.done["id"]

    @property
    def streamed(self) -> str:
        return assembled(self.events, self.reply_id)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def assistant_starts(self) -> list[dict[str, Any]]:
        return [e for e in self.of_type("message") if e["message"]["role"] == "assistant"]


def ask(visitor: Visitor, text: str, timeout: float = 25) -> Turn:
    """Ask one question in a new conversation and read until the reply has ended.

    A failed reply's `done` is followed by an `error` event; a complete one by
    typing off. Reading up to those keeps every event of the reply in `events`.
    """
    conversation = visitor.start()

    async def scenario() -> Turn:
        async with visitor.socket(conversation) as socket:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await socket.say(text)
            events, done = await socket.reply(timeout)
            elapsed = loop.time() - started
            if done["status"] == "failed":
                events += await socket.until(lambda e: e["type"] == "error")
            else:
                events += await socket.until(lambda e: e["type"] == "typing" and not e["on"])
            return Turn(events, done, elapsed)

    return run(scenario())


def assert_streamed_in_order(turn: Turn) -> None:
    deltas = deltas_of(turn.events, turn.reply_id)
    assert [d["index"] for d in deltas] == list(range(len(deltas)))


def assert_completed(turn: Turn, tokens: list[str]) -> Message:
    """The visitor got exactly one complete reply; it is stored as streamed."""
    text = "".join(tokens)
    assert len(turn.assistant_starts()) == 1
    assert len([e for e in turn.of_type("done") if e["message"]["role"] == "assistant"]) == 1
    assert turn.of_type("error") == []
    assert_streamed_in_order(turn)
    assert turn.streamed == text
    assert turn.done["status"] == "complete" and turn.done["text"] == text

    stored = Message.objects.get(pk=turn.reply_id)
    assert stored.role == Message.Role.ASSISTANT
    assert stored.status == Message.Status.COMPLETE
    assert stored.text == text
    assert stored.error_code == ""
    assert stored.time_to_first_token_ms is not None
    assert stored.total_time_ms >= stored.time_to_first_token_ms
    assert (
        Message.objects.filter(
            conversation_id=stored.conversation_id, role=Message.Role.ASSISTANT
        ).count()
        == 1
    )
    return stored


def assert_failed(turn: Turn, *, streamed: str, error_code: str) -> Message:
    """The visitor got `done` failed and `reply_failed`; the stored text is what streamed."""
    assert len(turn.assistant_starts()) == 1
    assert_streamed_in_order(turn)
    assert turn.streamed == streamed
    assert turn.done["status"] == "failed" and turn.done["text"] == streamed
    errors = turn.of_type("error")
    assert [e["code"] for e in errors] == ["reply_failed"]
    assert errors[0]["message_id"] == turn.reply_id
    assert errors[0]["detail"]

    stored = Message.objects.get(pk=turn.reply_id)
    assert stored.status == Message.Status.FAILED
    assert stored.text == streamed
    assert stored.error_code == error_code
    # Usage is only stored for complete replies.
    assert (stored.prompt_tokens, stored.completion_tokens) == (None, None)
    assert stored.usage_estimated is False
    assert stored.total_time_ms is not None and stored.completed_at is not None
    return stored


def gap(llm, first: int, second: int) -> float:
    requests = llm.requests
    return requests[second]["received_at"] - requests[first]["received_at"]


# --- Retried failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "wait"),
    [
        # The jittered backoff of a first retry is at most 0.75 s: only the header waits 1 s.
        ("Retry-After", "1", 0.95),
        # 1500 read as seconds would exceed LLM_RETRY_MAX_WAIT and fail the reply.
        ("retry-after-ms", "1500", 1.45),
    ],
)
def test_it_retries_a_429_after_the_time_its_header_asks(visitor, llm, header, value, wait):
    llm.enqueue(Script(status=429, headers={header: value}))
    llm.enqueue(Script(tokens=TOKENS, usage=USAGE))

    turn = ask(visitor, "When does my order ship?")

    stored = assert_completed(turn, TOKENS)
    assert (stored.prompt_tokens, stored.completion_tokens) == (42, len(TOKENS))
    assert stored.usage_estimated is False
    requests = llm.requests
    assert len(requests) == 2
    assert requests[1]["json"] == requests[0]["json"]
    assert gap(llm, 0, 1) >= wait
    # The visitor's time to first token includes the wait.
    assert stored.time_to_first_token_ms >= wait * 1000


def test_it_retries_a_connection_lost_before_the_first_token(visitor, llm):
    llm.enqueue(Script(tokens=TOKENS, disconnect_after=0))
    llm.enqueue(Script(tokens=TOKENS, usage=USAGE))

    turn = ask(visitor, "When does my order ship?")

    stored = assert_completed(turn, TOKENS)
    assert (stored.prompt_tokens, stored.completion_tokens) == (42, len(TOKENS))
    requests = llm.requests
    assert len(requests) == 2
    assert requests[1]["json"] == requests[0]["json"]


# --- Failures that end the reply -------------------------------------------------------


def test_it_fails_the_reply_when_server_errors_outlast_the_retries(visitor, llm):
    for _ in range(MAX_RETRIES + 2):  # one more than the client may use
        llm.enqueue(Script(status=500))

    turn = ask(visitor, "When does my order ship?")

    stored = assert_failed(turn, streamed="", error_code="server_error")
    assert stored.time_to_first_token_ms is None
    requests = llm.requests
    assert len(requests) == 1 + MAX_RETRIES
    assert all(r["json"] == requests[0]["json"] for r in requests)


def test_it_does_not_retry_a_permanent_error(visitor, llm):
    llm.enqueue(Script(status=400))
    llm.enqueue(Script(tokens=TOKENS))  # would answer a retry

    turn = ask(visitor, "When does my order ship?")

    stored = assert_failed(turn, streamed="", error_code="bad_request")
    assert stored.time_to_first_token_ms is None
    assert len(llm.requests) == 1


def test_it_keeps_the_tokens_streamed_before_the_model_stalled(visitor, llm):
    k = 4
    llm.enqueue(
        Script(tokens=TOKENS, token_interval=0.05, stall_after=k, stall_seconds=READ_TIMEOUT + 8)
    )

    turn = ask(visitor, "When does my order ship?")

    stored = assert_failed(turn, streamed="".join(TOKENS[:k]), error_code="timeout")
    assert turn.elapsed >= READ_TIMEOUT - 0.1
    # The first token did arrive, and when is part of the record.
    assert stored.time_to_first_token_ms is not None
    assert stored.total_time_ms >= (READ_TIMEOUT - 0.1) * 1000
    # Text already shown to the visitor is never re-requested (it could come out different).
    assert len(llm.requests) == 1


def test_it_fails_a_reply_whose_first_token_never_comes(visitor, llm):
    # Silence after the headers: the read timeout ends it before the first-token deadline.
    llm.enqueue(Script(tokens=TOKENS, first_token_delay=FIRST_TOKEN_TIMEOUT + 6))

    turn = ask(visitor, "When does my order ship?")

    stored = assert_failed(turn, streamed="", error_code="timeout")
    assert READ_TIMEOUT - 0.1 <= turn.elapsed < FIRST_TOKEN_TIMEOUT + 4
    assert stored.time_to_first_token_ms is None
    assert len(llm.requests) == 1


def test_it_fails_a_reply_that_keeps_the_connection_busy_without_a_token(visitor, llm):
    # Empty content chunks each second beat the read timeout but are not a first token:
    # only the first-token deadline ends this.
    llm.enqueue(Script(tokens=[""] * 20, token_interval=1.0))

    turn = ask(visitor, "When does my order ship?")

    stored = assert_failed(turn, streamed="", error_code="timeout")
    assert FIRST_TOKEN_TIMEOUT - 0.1 <= turn.elapsed < FIRST_TOKEN_TIMEOUT + 4
    assert stored.time_to_first_token_ms is None
    assert stored.total_time_ms >= (FIRST_TOKEN_TIMEOUT - 0.1) * 1000
    assert len(llm.requests) == 1


def test_it_keeps_the_tokens_streamed_before_the_connection_broke(visitor, llm):
    k = 3
    llm.enqueue(Script(tokens=TOKENS, token_interval=0.02, disconnect_after=k))
    llm.enqueue(Script(tokens=TOKENS))  # would answer a retry

    turn = ask(visitor, "When does my order ship?")

    stored = assert_failed(turn, streamed="".join(TOKENS[:k]), error_code="interrupted")
    assert stored.time_to_first_token_ms is not None
    assert len(llm.requests) == 1


# --- Survivable damage -----------------------------------------------------------------


def test_it_skips_a_malformed_chunk_and_finishes_the_reply(visitor, llm):
    llm.enqueue(Script(tokens=TOKENS, token_interval=0.02, malformed_after=3, usage=USAGE))

    turn = ask(visitor, "When does my order ship?")

    stored = assert_completed(turn, TOKENS)
    assert (stored.prompt_tokens, stored.completion_tokens) == (42, len(TOKENS))
    assert len(llm.requests) == 1
