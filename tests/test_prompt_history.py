"""What a reply sends the model: the system prompt, then the conversation so far.

The trimming rule is tested on conversations.prompt.build_messages directly; the
end-to-end tests check that a real reply sends what the rule chose.
"""

from __future__ import annotations

from django.conf import settings

from conversations import tokens
from conversations.models import Conversation, Message
from conversations.prompt import build_messages, system_prompt_for
from tests.scripted_llm import Script
from tests.visitor import run

SYSTEM = "You are the Test shop's support assistant."
MODEL = "scripted-model"  # what the servers run with (tests/stack.py)


def system_message(site) -> dict[str, str]:
    """What a reply sends as its system message: the site's prompt, our rules, its canary."""
    content = system_prompt_for(site_prompt=SYSTEM, canary=site.prompt_canary, handoff_tool=False)
    return {"role": "system", "content": content}


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def turns(n: int, length: int = 40) -> list[Message]:
    """n unsaved messages alternating visitor/assistant, oldest first, each distinct."""
    return [
        Message(
            seq=i + 1,
            role=Message.Role.VISITOR if i % 2 == 0 else Message.Role.ASSISTANT,
            text=words(f"t{i}x", length),
        )
        for i in range(n)
    ]


def chat_role(message: Message) -> str:
    return {"visitor": "user", "assistant": "assistant", "agent": "assistant"}[message.role]


def as_chat(history: list[Message]) -> list[dict[str, str]]:
    return [{"role": chat_role(m), "content": m.text} for m in history]


def say_all(visitor, conversation, questions: list[str], timeout: float = 20):
    """Ask each question in turn on one socket; the `done` message of each reply."""

    async def scenario():
        async with visitor.socket(conversation) as socket:
            dones = []
            for question in questions:
                await socket.say(question)
                _, done = await socket.reply(timeout)
                dones.append(done)
                if done["status"] == "failed":
                    await socket.until(lambda e: e["type"] == "error")
            return dones

    return run(scenario())


# --- The trimming rule -------------------------------------------------------------------


def test_it_sends_everything_when_the_history_fits():
    history = turns(5, length=10)

    messages = build_messages(system_prompt=SYSTEM, history=history, budget=3000, model=MODEL)

    assert messages == [{"role": "system", "content": SYSTEM}, *as_chat(history)]


def test_it_drops_the_oldest_turns_first_to_fit_the_budget():
    history = turns(30)
    budget = 400

    messages = build_messages(system_prompt=SYSTEM, history=history, budget=budget, model=MODEL)

    assert messages[0] == {"role": "system", "content": SYSTEM}
    kept = messages[1:]
    assert 1 < len(kept) < len(history)
    # Newest kept in order, oldest dropped: a suffix of the history.
    assert kept == as_chat(history[-len(kept) :])
    assert tokens.count_messages(messages, MODEL) <= budget
    # As much as fits: one more (older) turn would have gone over.
    one_more = [messages[0], *as_chat(history[-len(kept) - 1 :])]
    assert tokens.count_messages(one_more, MODEL) > budget


def test_it_keeps_the_system_prompt_and_the_newest_turn_even_over_budget():
    history = [*turns(4), Message(seq=5, role=Message.Role.VISITOR, text=words("long", 600))]
    long_system = words("rule", 100)

    messages = build_messages(system_prompt=long_system, history=history, budget=256, model=MODEL)

    assert messages == [
        {"role": "system", "content": long_system},
        {"role": "user", "content": history[-1].text},
    ]


def test_it_sends_agent_messages_as_the_assistant():
    history = [
        Message(seq=1, role=Message.Role.VISITOR, text="Can a person help?"),
        Message(seq=2, role=Message.Role.AGENT, text="Hi, this is Sam."),
        Message(seq=3, role=Message.Role.VISITOR, text="Great"),
    ]

    messages = build_messages(system_prompt=SYSTEM, history=history, budget=3000, model=MODEL)

    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]


# --- End to end --------------------------------------------------------------------------


def test_it_sends_the_earlier_questions_and_answers_in_order(visitor, llm, site):
    answers = [["Orders", " ship", " in", " 2", " days", "."], ["Returns", " are", " free", "."]]
    for answer in answers:
        llm.enqueue(Script(tokens=answer))
    llm.enqueue(Script(tokens=["You", " are", " welcome", "."]))
    questions = ["How fast do you ship?", "And returns?", "Thanks, anything else?"]
    conversation = visitor.start()

    dones = say_all(visitor, conversation, questions)

    assert [d["status"] for d in dones] == ["complete"] * 3
    assert [d["text"] for d in dones[:2]] == ["".join(a) for a in answers]
    assert len(llm.requests) == 3
    assert llm.requests[2]["json"]["messages"] == [
        system_message(site),
        {"role": "user", "content": questions[0]},
        {"role": "assistant", "content": "".join(answers[0])},
        {"role": "user", "content": questions[1]},
        {"role": "assistant", "content": "".join(answers[1])},
        {"role": "user", "content": questions[2]},
    ]
    stored = list(
        Message.objects.filter(conversation_id=conversation["conversation"]["id"]).order_by("seq")
    )
    assert [(m.role, m.text, m.status) for m in stored] == [
        ("visitor", questions[0], "complete"),
        ("assistant", "".join(answers[0]), "complete"),
        ("visitor", questions[1], "complete"),
        ("assistant", "".join(answers[1]), "complete"),
        ("visitor", questions[2], "complete"),
        ("assistant", "You are welcome.", "complete"),
    ]


def test_it_trims_a_long_history_to_the_context_budget(visitor, llm, site):
    budget = settings.LLM_CONTEXT_TOKENS
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    # Far more history than the budget holds, written straight to the database.
    history = turns(40, length=150)
    for message in history:
        message.conversation_id = conversation_id
    Message.objects.bulk_create(history)
    Conversation.objects.filter(pk=conversation_id).update(seq=len(history))
    assert tokens.count_messages(as_chat(history), MODEL) > 2 * budget
    llm.enqueue(Script(tokens=["Sure", "."]))

    [done] = say_all(visitor, conversation, ["One more question"])

    assert done["status"] == "complete" and done["text"] == "Sure."
    messages = llm.requests[-1]["json"]["messages"]
    assert messages[0] == system_message(site)
    assert messages[-1] == {"role": "user", "content": "One more question"}
    earlier = messages[1:-1]
    assert 0 < len(earlier) < len(history)
    assert earlier == as_chat(history[-len(earlier) :])
    assert tokens.count_messages(messages, MODEL) <= budget
    one_more = [messages[0], *as_chat(history[-len(earlier) - 1 :]), messages[-1]]
    assert tokens.count_messages(one_more, MODEL) > budget
    stored = Message.objects.get(pk=done["id"])
    assert stored.status == Message.Status.COMPLETE and stored.text == "Sure."
    assert stored.seq == len(history) + 2


def test_it_does_not_send_failed_or_withdrawn_replies_back_to_the_model(visitor, llm, site):
    llm.enqueue(Script(tokens=["Half", " an", " answer", " that"], disconnect_after=3))
    llm.enqueue(Script(tokens=["Something", " rude", "."]))
    llm.enqueue(Script(tokens=["Fine", "."]))
    questions = ["First question", "Second question", "Third question"]
    conversation = visitor.start()

    failed, second = say_all(visitor, conversation, questions[:2])
    # Moderation would withdraw this answer; here the row is marked directly.
    Message.objects.filter(pk=second["id"]).update(status=Message.Status.WITHDRAWN)
    [third] = say_all(visitor, conversation, questions[2:])

    assert failed["status"] == "failed" and failed["text"] == "Half an answer"
    assert second["status"] == "complete" and second["text"] == "Something rude."
    assert third["status"] == "complete" and third["text"] == "Fine."
    stored = Message.objects.get(pk=failed["id"])
    assert (stored.status, stored.text, stored.error_code) == (
        "failed",
        "Half an answer",
        "interrupted",
    )
    assert Message.objects.get(pk=second["id"]).text == "Something rude."
    assert len(llm.requests) == 3
    assert llm.requests[1]["json"]["messages"] == [
        system_message(site),
        {"role": "user", "content": questions[0]},
        {"role": "user", "content": questions[1]},
    ]
    assert llm.requests[2]["json"]["messages"] == [
        system_message(site),
        {"role": "user", "content": questions[0]},
        {"role": "user", "content": questions[1]},
        {"role": "user", "content": questions[2]},
    ]
