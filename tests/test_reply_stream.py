"""A visitor's message streams back the model's reply, and what is stored matches."""

from __future__ import annotations

from conversations.models import Message
from conversations.prompt import system_prompt_for
from tests.scripted_llm import Script
from tests.visitor import assembled, deltas_of, run


def test_it_streams_the_models_tokens_and_stores_them_with_usage(visitor, llm, site):
    tokens = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
    llm.enqueue(
        Script(
            tokens=tokens,
            token_interval=0.06,
            usage={"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40},
        )
    )
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            client_id = await socket.say("Hi, I need help with my order")
            events, done = await socket.reply()
            return client_id, events, done

    client_id, events, done = run(scenario())
    echo = next(e for e in events if e["type"] == "message" and e["message"]["role"] == "visitor")
    assert echo["message"]["client_id"] == client_id
    assert echo["message"]["text"] == "Hi, I need help with my order"
    start = next(
        e for e in events if e["type"] == "message" and e["message"]["role"] == "assistant"
    )
    assert start["message"]["status"] == "streaming" and start["message"]["text"] == ""
    reply_id = start["message"]["id"]
    deltas = deltas_of(events, reply_id)
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    assert len(deltas) >= 3, "60 ms between tokens must give several coalesced deltas"
    assert assembled(events, reply_id) == "".join(tokens)
    assert done["text"] == "".join(tokens) and done["status"] == "complete"

    stored = Message.objects.get(pk=reply_id)
    assert stored.text == "".join(tokens)
    assert stored.status == Message.Status.COMPLETE
    assert (stored.prompt_tokens, stored.completion_tokens) == (31, 9)
    assert stored.usage_estimated is False
    assert stored.time_to_first_token_ms is not None and stored.total_time_ms >= 400
    assert stored.seq == echo["message"]["seq"] + 1

    request = llm.requests[-1]["json"]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["model"] == "scripted-model"
    assert request["temperature"] == 0.2 and request["max_tokens"] == 300
    assert request["messages"][0] == {
        "role": "system",
        "content": system_prompt_for(
            site_prompt=site.system_prompt, canary=site.prompt_canary, handoff_tool=False
        ),
    }
    assert request["messages"][-1] == {"role": "user", "content": "Hi, I need help with my order"}


def test_it_estimates_usage_when_the_stream_reports_none(visitor, llm):
    llm.enqueue(Script(tokens=["One", " two", " three"], usage=None))
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("count please")
            return await socket.reply()

    _, done = run(scenario())
    stored = Message.objects.get(pk=done["id"])
    assert stored.usage_estimated is True
    assert stored.completion_tokens == 3
    assert stored.prompt_tokens > 10
