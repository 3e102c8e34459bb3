"""The model client offers the handoff tool when configured and reports tool calls."""

from __future__ import annotations

import asyncio

from conversations.handoff import HANDOFF_TOOL
from conversations.llm import ChatRequest, LLMClient
from tests.scripted_llm import Script


def _stream(llm, request: ChatRequest):
    client = LLMClient(base_url=llm.base_url, max_retries=0)
    pieces: list[str] = []
    result = asyncio.run(client.stream_chat(request, pieces.append))
    return result, pieces


def test_it_offers_the_handoff_tool_and_reports_the_call(llm):
    llm.enqueue(Script(tokens=["One moment."], tool_call="handoff_to_human"))
    request = ChatRequest(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.2,
        max_tokens=50,
        tools=[HANDOFF_TOOL],
    )
    result, pieces = _stream(llm, request)
    assert result.tool_calls == ["handoff_to_human"]
    assert "".join(pieces) == "One moment." and result.text == "One moment."
    sent = llm.requests[-1]["json"]
    assert sent["tools"] == [HANDOFF_TOOL] and sent["tool_choice"] == "auto"


def test_a_tool_call_without_text_still_counts_as_the_first_token(llm):
    llm.enqueue(Script(tokens=[], tool_call="handoff_to_human", first_token_delay=0.05))
    request = ChatRequest(model="m", messages=[], temperature=0, max_tokens=5)
    result, pieces = _stream(llm, request)
    assert pieces == [] and result.tool_calls == ["handoff_to_human"]
    assert result.time_to_first_token is not None
    assert "tools" not in llm.requests[-1]["json"], "no tools unless configured"
