"""Every answer carries a handoff decision; each trigger hands the conversation to a
person (status, ticket, agents' event, plain words for the visitor), and ordinary
support questions trigger none."""

from __future__ import annotations

import time

import pytest

from conversations import handoff
from conversations.models import Conversation, Message, StatusChange, Ticket
from tests.moderation_helpers import AgentsFeed, chat_requests, frames_text, make_site
from tests.scripted_llm import Script
from tests.visitor import Visitor, run


def visitor_for(stack, site) -> Visitor:
    return Visitor(stack.http_url, stack.ws_url, site.public_key)


def is_notice(event) -> bool:
    return event["type"] == "message" and event["message"]["role"] == "system"


async def handed_off(socket, agents, conversation_id):
    """Wait for the status change and the visitor's notice; the agents' event."""
    events = await socket.until(lambda e: e["type"] == "status")
    if not any(is_notice(e) for e in socket.events):
        events += await socket.until(is_notice)
    return events, await agents.next_for(conversation_id)


def answered_then_handed_off(visitor, conversation, text: str):
    """Say `text`; the events up to the answer's `done` and through the handoff that
    follows it, the done message, and the agents' queue event."""
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with AgentsFeed() as agents, visitor.socket(conversation) as socket:
            await socket.say(text)
            events, done = await socket.reply()
            more, queued = await handed_off(socket, agents, conversation_id)
            return events + more, done, queued

    return run(scenario())


def assert_handed_off(conversation_id: str, reason: str, events, queued) -> None:
    conv = Conversation.objects.get(pk=conversation_id)
    assert conv.status == Conversation.Status.WAITING
    assert conv.handoff_requested and conv.handoff_reason == reason
    change = StatusChange.objects.get(conversation_id=conversation_id)
    assert change.status == "waiting" and change.reason == reason
    ticket = Ticket.objects.get(conversation_id=conversation_id)
    assert ticket.status == Ticket.Status.OPEN and ticket.reason == reason
    assert queued["action"] == "handoff" and queued["conversation"]["handoff_reason"] == reason
    status = next(e for e in events if e["type"] == "status")
    assert status == {"type": "status", "status": "waiting", "seq": change.seq}
    notice = Message.objects.get(conversation_id=conversation_id, role=Message.Role.SYSTEM)
    assert notice.text == conv.site.handoff_notice and notice.handoff_reason == reason


@pytest.mark.parametrize(
    "words",
    [
        "Can I talk to a human please?",
        "I want to speak with a real person",
        "connect me to an agent",
        "representative",
    ],
)
def test_it_hands_off_when_the_visitor_asks_in_plain_words(stack, llm, words):
    site = make_site()
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with AgentsFeed() as agents, visitor.socket(conversation) as socket:
            await socket.say(words)
            return await handed_off(socket, agents, conversation_id)

    events, queued = run(scenario())
    assert chat_requests(llm) == [], "the bot does not answer a request for a person"
    assert_handed_off(conversation_id, handoff.VISITOR_ASKED, events, queued)
    question = Message.objects.get(conversation_id=conversation_id, role="visitor")
    assert question.handoff_requested and question.handoff_reason == handoff.VISITOR_ASKED


def test_the_handoff_frame_tells_the_visitor_in_plain_words(stack, llm):
    site = make_site()
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with AgentsFeed() as agents, visitor.socket(conversation) as socket:
            await socket.send({"type": "handoff"})
            return await handed_off(socket, agents, conversation_id)

    events, queued = run(scenario())
    assert_handed_off(conversation_id, handoff.VISITOR_ASKED, events, queued)


def test_a_site_topic_always_goes_to_a_person(stack, llm):
    site = make_site(handoff_topics=["refund", "legal action"])
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with AgentsFeed() as agents, visitor.socket(conversation) as socket:
            await socket.say("I'd like a REFUND for order 1182")
            return await handed_off(socket, agents, conversation_id)

    events, queued = run(scenario())
    assert chat_requests(llm) == []
    assert_handed_off(conversation_id, "handoff topic: refund", events, queued)


def test_the_same_question_three_times_goes_to_a_person(stack, llm):
    site = make_site()
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with AgentsFeed() as agents, visitor.socket(conversation) as socket:
            await socket.say("Why was my card charged twice?")
            await socket.reply()
            await socket.say("why was my card charged twice??")
            await socket.reply()
            await socket.say("Why was my card charged twice")
            return await handed_off(socket, agents, conversation_id)

    events, queued = run(scenario())
    assert len(chat_requests(llm)) == 2, "the third ask goes to a person, not the model"
    assert_handed_off(conversation_id, handoff.REPEATED_QUESTION, events, queued)


def test_the_models_handoff_marker_is_stripped_and_hands_off(stack, llm):
    site = make_site()
    llm.enqueue(
        Script(
            tokens=["I'm not sure about", " that one, sorry.", " [[hand", "off]]"],
            token_interval=0.01,
        )
    )
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    events, done, queued = answered_then_handed_off(
        visitor, conversation, "Can you repair a cracked hinge?"
    )
    assert "[[" not in frames_text(events) and "handoff]]" not in frames_text(events)
    assert done["text"] == "I'm not sure about that one, sorry."
    reply = Message.objects.get(pk=done["id"])
    assert reply.handoff_requested and reply.handoff_reason == handoff.MODEL_CANNOT_HELP
    assert_handed_off(conversation_id, handoff.MODEL_CANNOT_HELP, events, queued)
    assert "[[handoff]]" in chat_requests(llm)[0]["json"]["messages"][0]["content"]


def test_a_handoff_tool_call_hands_off(stack, llm):
    site = make_site()
    llm.enqueue(Script(tokens=["Let me get someone for you."], tool_call="handoff_to_human"))
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    events, done, queued = answered_then_handed_off(
        visitor, conversation, "My warranty claim was rejected unfairly"
    )
    assert done["text"] == "Let me get someone for you."
    assert_handed_off(conversation_id, handoff.MODEL_CANNOT_HELP, events, queued)


def test_two_failed_replies_in_a_row_go_to_a_person(stack, llm):
    site = make_site()
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    llm.enqueue(Script(status=400))
    llm.enqueue(Script(status=400))

    async def scenario():
        async with AgentsFeed() as agents, visitor.socket(conversation) as socket:
            await socket.say("What are your opening hours?")
            _, first = await socket.reply()
            await socket.say("Hello? What are your opening hours on Sunday?")
            _, second = await socket.reply()
            events, queued = await handed_off(socket, agents, conversation_id)
            return first, second, events, queued

    first, second, events, queued = run(scenario())
    assert first["status"] == second["status"] == "failed"
    assert not Message.objects.get(pk=first["id"]).handoff_requested
    assert Message.objects.get(pk=second["id"]).handoff_reason == handoff.TWO_FAILURES
    assert_handed_off(conversation_id, handoff.TWO_FAILURES, events, queued)


ORDINARY = [
    "Hi, where is my order #5521?",
    "How do I kill the process that freezes the app on Windows?",
    "Can you shoot me an email with the invoice?",
    "The update killed my battery life, any tips?",
    "I hate waiting this long for delivery, is there a faster option?",
    "Do you have children's sizes in the winter jacket?",
    "My tracking number is 1Z999AA10123456784, it says delivered but nothing arrived",
    "How can I change the agent name shown on my invoices?",
    "I talked to a person yesterday and they said it would be fixed, is it?",
    "Is this a human or a bot?",
]


def test_ordinary_support_questions_trigger_no_handoff(stack, llm):
    site = make_site()
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with visitor.socket(conversation) as socket:
            dones = []
            for question in ORDINARY:
                await socket.say(question)
                dones.append((await socket.reply())[1])
            return dones

    dones = run(scenario())
    assert [d["status"] for d in dones] == ["complete"] * len(ORDINARY)
    assert len(chat_requests(llm)) == len(ORDINARY)
    conv = Conversation.objects.get(pk=conversation_id)
    assert conv.status == "bot" and not conv.handoff_requested and not conv.moderation_flagged
    assert not Ticket.objects.filter(conversation_id=conversation_id).exists()
    rows = Message.objects.filter(conversation_id=conversation_id)
    assert not any(row.handoff_requested for row in rows)
    assert all(row.moderation == "passed" for row in rows), [
        (row.text, row.moderation_categories) for row in rows if row.moderation != "passed"
    ]


def test_while_waiting_the_bot_stays_quiet_but_still_moderates(stack, llm):
    site = make_site()
    visitor = visitor_for(stack, site)
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.send({"type": "handoff"})
            await socket.until(lambda e: e["type"] == "status")
            await socket.say("Also, you are a fucking idiot")
            await socket.until(
                lambda e: e["type"] == "message" and e["message"]["role"] == "visitor"
            )

    run(scenario())
    question = Message.objects.get(conversation_id=conversation_id, role="visitor")
    for _ in range(100):
        question.refresh_from_db()
        if question.moderation != "pending":
            break
        time.sleep(0.1)
    assert question.moderation == "flagged"
    assert chat_requests(llm) == []
    assert not Message.objects.filter(conversation_id=conversation_id, role="assistant").exists()
    ticket = Ticket.objects.get(conversation_id=conversation_id)
    assert ticket.priority == Ticket.Priority.HIGH, "a flagged message raises the ticket"


def test_a_site_may_let_the_bot_keep_helping_while_waiting(stack, llm):
    site = make_site(bot_answers_while_waiting=True)
    visitor = visitor_for(stack, site)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.send({"type": "handoff"})
            await socket.until(lambda e: e["type"] == "status")
            await socket.say("Meanwhile, what sizes do you have?")
            return await socket.reply()

    _, done = run(scenario())
    assert done["status"] == "complete"
    conv = Conversation.objects.get(pk=conversation["conversation"]["id"])
    assert conv.status == Conversation.Status.WAITING
