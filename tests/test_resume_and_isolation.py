"""Resuming a conversation without gaps or duplicates, seq numbering, handoff, and
isolation between visitors and conversations (docs/protocol.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from conversations.models import Conversation, Message, StatusChange, Ticket
from tests.protocol_helpers import (
    events_before_pong,
    frames_until_closed,
    is_assistant_done,
    is_visitor_message,
    stored_seqs,
)
from tests.scripted_llm import Script
from tests.visitor import Visitor, deltas_of, run


def _exchange(visitor: Visitor, conversation: dict, texts: list[str]) -> None:
    async def scenario():
        async with visitor.socket(conversation) as socket:
            for text in texts:
                await socket.say(text)
                await socket.reply()

    run(scenario())


def _resume(visitor: Visitor, conversation: dict, last_seq: int):
    """Reconnect with last_seq; the ready event and everything replayed before a pong."""

    async def scenario():
        async with visitor.socket(conversation, last_seq=last_seq) as socket:
            return socket.ready, await events_before_pong(socket)

    return run(scenario())


def _seq_of(event: dict[str, Any]) -> int | None:
    if event["type"] == "message":
        return event["message"]["seq"]
    if event["type"] == "status":
        return event["seq"]
    return None


# --- Resume ---------------------------------------------------------------------------------


def test_it_replays_every_message_once_in_seq_order_when_resuming_from_zero(visitor, llm):
    llm.enqueue(Script(tokens=["Answer", " one"]), match="question one")
    llm.enqueue(Script(tokens=["Answer", " two"]), match="question two")
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    _exchange(visitor, conversation, ["question one", "question two"])

    ready, replay = _resume(visitor, conversation, last_seq=0)

    assert ready == {
        "type": "ready",
        "conversation": {"id": conversation_id, "status": "bot"},
        "last_seq": 4,
    }
    assert [e["type"] for e in replay] == ["message"] * 4
    messages = [e["message"] for e in replay]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4]
    assert [(m["role"], m["text"], m["status"]) for m in messages] == [
        ("visitor", "question one", "complete"),
        ("assistant", "Answer one", "complete"),
        ("visitor", "question two", "complete"),
        ("assistant", "Answer two", "complete"),
    ]
    # The replay is exactly what the HTTP API lists.
    assert messages == visitor.messages(conversation_id).json()["messages"]


def test_it_replays_only_what_follows_the_clients_last_seq(visitor, llm):
    conversation = visitor.start()
    _exchange(visitor, conversation, ["question one", "question two"])

    for last_seq, expected in [
        (1, [2, 3, 4]),
        (2, [3, 4]),
        (3, [4]),
        (4, []),
        (50, []),
        (2**70, []),
    ]:
        ready, replay = _resume(visitor, conversation, last_seq=last_seq)
        assert ready["last_seq"] == 4
        assert [e["type"] for e in replay] == ["message"] * len(expected), replay
        assert [e["message"]["seq"] for e in replay] == expected


def test_it_resumes_a_streaming_reply_with_the_text_so_far_and_no_duplicates(visitor, llm):
    tokens = [f"t{i} " for i in range(30)]
    llm.enqueue(Script(tokens=tokens, token_interval=0.1))
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with visitor.socket(conversation) as first:
            await first.say("tell me a long story")
            before_drop = await first.until(lambda e: e["type"] == "delta" and e["index"] >= 2)
        # The first socket dropped mid-reply; the client comes back from scratch.
        async with visitor.socket(conversation, last_seq=0) as second:
            resumed = await second.until(is_assistant_done, timeout=30)
            resumed += await events_before_pong(second)
            return before_drop, second.ready, resumed

    before_drop, ready, resumed = run(scenario())
    reply_id = next(e["message"]["id"] for e in before_drop if e["type"] == "message" and
                    e["message"]["role"] == "assistant")  # fmt: skip
    seen_before_drop = "".join(d["text"] for d in deltas_of(before_drop, reply_id))
    assert ready["last_seq"] == 2

    messages = [e["message"] for e in resumed if e["type"] == "message"]
    assert [(m["seq"], m["role"]) for m in messages] == [(1, "visitor"), (2, "assistant")]
    streaming = messages[1]
    assert streaming["id"] == reply_id and streaming["status"] == "streaming"
    text_so_far = streaming["text"]
    assert text_so_far.startswith(seen_before_drop) and seen_before_drop
    later = deltas_of(resumed, reply_id)
    assert later, "the reply was still streaming, so deltas must follow the snapshot"
    indexes = [d["index"] for d in later]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    done = [e["message"] for e in resumed if is_assistant_done(e)]
    assert len(done) == 1 and done[0]["id"] == reply_id
    assert text_so_far + "".join(d["text"] for d in later) == done[0]["text"] == "".join(tokens)
    # Nothing after done but housekeeping.
    after_done = resumed[resumed.index(next(e for e in resumed if is_assistant_done(e))) + 1 :]
    assert {e["type"] for e in after_done} <= {"typing"}

    stored = Message.objects.get(pk=reply_id)
    assert stored.status == Message.Status.COMPLETE and stored.text == "".join(tokens)
    assert stored_seqs(conversation_id) == [1, 2]


# --- seq and handoff ------------------------------------------------------------------------


def test_it_numbers_messages_and_status_changes_without_gaps_and_stops_the_bot_on_handoff(
    visitor, llm
):
    llm.enqueue(Script(tokens=["Hi", " there"]), match="hello")
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("hello")
            events, _ = await socket.reply()
            await socket.send({"type": "handoff"})
            events += await socket.until(lambda e: e["type"] == "status")
            await socket.say("is anyone there?")
            events += await socket.until(is_visitor_message)
            # The bot no longer answers: nothing may follow the echo.
            quiet: list[dict] = []
            try:
                while True:
                    quiet.append(await socket.recv(timeout=1.5))
            except TimeoutError:
                pass
            return events, quiet + await events_before_pong(socket)

    events, quiet = run(scenario())
    assert [e for e in quiet if e["type"] != "typing"] == []
    status = [e for e in events if e["type"] == "status"]
    assert status == [{"type": "status", "status": "waiting", "seq": 3}]
    seqs = [seq for seq in map(_seq_of, events) if seq is not None]
    # 4: the system message telling the visitor a person will take over.
    assert seqs == [1, 2, 3, 4, 5]

    assert stored_seqs(conversation_id) == [1, 2, 3, 4, 5]
    stored = Conversation.objects.get(pk=conversation_id)
    assert stored.seq == 5 and stored.status == Conversation.Status.WAITING
    assert stored.handoff_requested
    assert list(StatusChange.objects.filter(conversation=stored).values_list("seq", "status")) == [
        (3, "waiting")
    ]
    assert list(Ticket.objects.filter(conversation=stored).values_list("subject", flat=True)) == [
        "hello"
    ]
    notice = Message.objects.get(conversation=stored, seq=4)
    assert notice.role == Message.Role.SYSTEM and notice.text == stored.site.handoff_notice
    late = Message.objects.get(conversation=stored, seq=5)
    assert late.role == Message.Role.VISITOR and not Message.objects.filter(reply_to=late).exists()
    assert len(llm.requests) == 1

    listing = visitor.messages(conversation_id).json()
    assert listing["status"] == "waiting" and listing["last_seq"] == 5
    assert [m["seq"] for m in listing["messages"]] == [1, 2, 4, 5]
    ready, replay = _resume(visitor, conversation, last_seq=0)
    assert ready["conversation"]["status"] == "waiting" and ready["last_seq"] == 5
    assert [(e["type"], _seq_of(e)) for e in replay] == [
        ("message", 1),
        ("message", 2),
        ("status", 3),
        ("message", 4),
        ("message", 5),
    ]


# --- Isolation --------------------------------------------------------------------------------


def test_it_lets_no_visitor_read_or_join_another_visitors_conversation(stack, site, visitor, llm):
    llm.enqueue(Script(tokens=["Private", " answer"]), match="my secret order")
    owner = Visitor(stack.http_url, stack.ws_url, site.public_key)
    owners = owner.start()
    owners_id = owners["conversation"]["id"]
    _exchange(owner, owners, ["my secret order"])
    visitor.start()

    listing = visitor.messages(owners_id)

    async def join():
        async with visitor.socket(owners, hello=False) as socket:
            await socket.send({"type": "hello", "token": visitor.token, "last_seq": 0})
            return await frames_until_closed(socket)

    frames, code = run(join())
    assert listing.status_code == 404
    assert "secret" not in listing.text
    assert frames == [] and code == 4401
    assert owner.messages(owners_id).json()["last_seq"] == 2
    assert stored_seqs(owners_id) == [1, 2]


def test_it_keeps_the_events_of_two_conversations_streaming_at_once_apart(stack, site, llm):
    alpha_tokens = [f"alpha{i} " for i in range(15)]
    beta_tokens = [f"beta{i} " for i in range(15)]
    llm.enqueue(Script(tokens=alpha_tokens, token_interval=0.1), match="question from alpha")
    llm.enqueue(Script(tokens=beta_tokens, token_interval=0.1), match="question from beta")
    alpha = Visitor(stack.http_url, stack.ws_url, site.public_key)
    beta = Visitor(stack.http_url, stack.ws_url, site.public_key)
    alpha_conversation, beta_conversation = alpha.start(), beta.start()

    async def chat(visitor: Visitor, conversation: dict, text: str, started: asyncio.Barrier):
        async with visitor.socket(conversation) as socket:
            await started.wait()
            await socket.say(text)
            events, _ = await socket.reply(timeout=30)
            return events + await events_before_pong(socket)

    async def scenario():
        started = asyncio.Barrier(2)
        return await asyncio.gather(
            chat(alpha, alpha_conversation, "question from alpha", started),
            chat(beta, beta_conversation, "question from beta", started),
        )

    alpha_events, beta_events = run(scenario())
    for events, conversation, own, other in [
        (alpha_events, alpha_conversation, alpha_tokens, "beta"),
        (beta_events, beta_conversation, beta_tokens, "alpha"),
    ]:
        conversation_id = conversation["conversation"]["id"]
        own_ids = {
            str(pk)
            for pk in Message.objects.filter(conversation_id=conversation_id).values_list(
                "pk", flat=True
            )
        }
        assert len(own_ids) == 2
        for event in events:
            message_id = event.get("message_id") or event.get("message", {}).get("id")
            if message_id is not None:
                assert message_id in own_ids, event
            assert other not in str(event), event
        done = [e["message"] for e in events if is_assistant_done(e)]
        assert [d["text"] for d in done] == ["".join(own)]
        reply_id = done[0]["id"]
        assert "".join(d["text"] for d in deltas_of(events, reply_id)) == "".join(own)

    # The two replies really did stream at the same time.
    alpha_reply = Message.objects.get(
        conversation_id=alpha_conversation["conversation"]["id"], role="assistant"
    )
    beta_reply = Message.objects.get(
        conversation_id=beta_conversation["conversation"]["id"], role="assistant"
    )
    assert alpha_reply.created_at < beta_reply.completed_at
    assert beta_reply.created_at < alpha_reply.completed_at
