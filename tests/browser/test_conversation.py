"""A visitor chats through the real widget in a real browser, against the real stack."""

from __future__ import annotations

import re
import time

from conversations.models import Conversation, Message
from tests.browser.widget import PLAIN_SENTENCE, Widget, expect
from tests.scripted_llm import Script

REPLY_TOKENS = [
    "Your", " parcel", " left", " our", " warehouse", " this", " morning", " and",
    " should", " arrive", " within", " three", " working", " days", ".",
]  # fmt: skip
REPLY = "".join(REPLY_TOKENS)


def _demo(page, stack) -> Widget:
    page.goto(stack.http_url + "/")
    return Widget(page)


def test_a_visitor_sees_the_reply_grow_and_end_as_stored(page, stack, demo_site, llm):
    llm.enqueue(Script(tokens=REPLY_TOKENS, token_interval=0.15))
    widget = _demo(page, stack)
    widget.open()
    expect(widget.greeting).to_be_visible()
    widget.record_assistant_text()

    widget.send("Where is my parcel?")
    visitor = widget.last("visitor")
    expect(visitor.locator(".sb-text")).to_have_text("Where is my parcel?")
    expect(widget.input).to_have_value("")

    # Sample the bubble from here too, while it streams. Only the in-page recorder
    # (every DOM change) is asserted to grow: polling from here depends on timing.
    assistant = widget.bubbles("assistant").first
    expect(assistant).to_be_attached()
    seen_here: list[str] = []
    deadline = time.monotonic() + 20
    while assistant.get_attribute("data-status") == "streaming" and time.monotonic() < deadline:
        text = widget.text_of(assistant) or ""
        if text and (not seen_here or seen_here[-1] != text):
            seen_here.append(text)
        page.wait_for_timeout(50)
    bubble = widget.wait_reply_complete()

    stored = Message.objects.get(role=Message.Role.ASSISTANT)
    assert stored.text == REPLY
    expect(bubble.locator(".sb-text")).to_have_text(stored.text)
    assert widget.text_of(bubble) == stored.text
    assert bubble.get_attribute("data-message-id") == str(stored.pk)

    samples = widget.recorded_assistant_text()
    partial = [s["text"] for s in samples if s["status"] == "streaming" and s["text"]]
    assert len(set(partial)) >= 3, f"the reply did not grow in steps: {samples}"
    for earlier, later in zip(partial, partial[1:], strict=False):
        assert later.startswith(earlier), f"streamed text went backwards: {samples}"
    assert all(REPLY.startswith(text) for text in partial), samples
    assert all(REPLY.startswith(text) for text in seen_here), seen_here

    visitor_row = Message.objects.get(role=Message.Role.VISITOR)
    assert visitor.get_attribute("data-message-id") == str(visitor_row.pk)
    assert visitor.get_attribute("data-client-id") == visitor_row.client_id
    expect(visitor).to_have_attribute("data-status", "complete")
    expect(widget.panel).to_have_attribute("data-connection", "online")


def test_a_reload_brings_the_history_back_once(page, stack, demo_site, llm):
    llm.enqueue(Script(tokens=["Happy", " to", " help", "!"], token_interval=0.02))
    widget = _demo(page, stack)
    widget.open()
    widget.send("Do you ship to Norway?")
    widget.wait_reply_complete()
    before = widget.snapshot()

    page.reload()
    widget = Widget(page)
    widget.wait_ready()
    if not widget.is_open():
        widget.open()
    expect(widget.bubbles()).to_have_count(2)
    expect(widget.panel).to_have_attribute("data-connection", "online")
    page.wait_for_timeout(750)  # a late duplicate (history and replay both) would show by now

    after = widget.snapshot()
    stored = list(Message.objects.order_by("seq"))
    assert [b["id"] for b in after] == [str(m.pk) for m in stored], after
    assert [(b["role"], b["text"], b["status"]) for b in after] == [
        ("visitor", "Do you ship to Norway?", "complete"),
        ("assistant", "Happy to help!", "complete"),
    ]
    assert after == before
    expect(widget.greeting).to_have_count(1)
    assert Conversation.objects.count() == 1, "a reload must continue the same conversation"


def test_it_works_with_the_keyboard_alone(page, stack, demo_site, llm):
    llm.enqueue(Script(tokens=["Sure", ",", " any", " time", "."], token_interval=0.02))
    widget = _demo(page, stack)
    widget.wait_ready()

    for _ in range(10):  # the demo page has nothing focusable before the widget
        page.keyboard.press("Tab")
        if widget.shadow_active() == "button.sb-launcher":
            break
    assert widget.shadow_active() == "button.sb-launcher", widget.shadow_active()
    expect(widget.launcher).to_be_focused()

    page.keyboard.press("Enter")
    expect(widget.panel).to_be_visible()
    expect(widget.input).to_be_focused()

    page.keyboard.type("Can I return an item?")
    page.keyboard.press("Enter")
    expect(widget.last("visitor").locator(".sb-text")).to_have_text("Can I return an item?")
    expect(widget.input).to_have_value("")
    bubble = widget.wait_reply_complete()
    expect(bubble.locator(".sb-text")).to_have_text("Sure, any time.")

    page.keyboard.press("Escape")
    expect(widget.panel).to_be_hidden()
    expect(widget.launcher).to_be_focused()
    assert widget.is_open() is False


def test_the_page_api_the_ready_event_handoff_and_a_too_long_message(
    new_context, stack, demo_site, llm
):
    llm.enqueue(Script(tokens=["Hello", "!"], token_interval=0.02))
    context = new_context()
    context.add_init_script(
        "window.__sbReadyEvents = 0;"
        "window.addEventListener('supportbot:ready', () => { window.__sbReadyEvents += 1; });"
    )
    page = context.new_page()
    widget = _demo(page, stack)
    widget.wait_ready()
    assert page.evaluate("() => window.__sbReadyEvents") == 1
    expect(widget.panel).to_be_hidden()
    assert widget.is_open() is False

    page.evaluate("() => window.SupportBot.open()")
    expect(widget.panel).to_be_visible()
    assert widget.is_open() is True
    page.evaluate("() => window.SupportBot.close()")
    expect(widget.panel).to_be_hidden()
    assert widget.is_open() is False
    page.evaluate("() => window.SupportBot.open()")
    expect(widget.panel).to_be_visible()

    # A message over 4,000 characters: a sentence a person understands, text kept.
    too_long = "My order number is 1042. " + "x" * 4000
    widget.send(too_long)
    expect(widget.error).to_be_visible()
    error = widget.error.inner_text().strip()
    assert PLAIN_SENTENCE.match(error), f"not a plain sentence: {error!r}"
    assert not re.search(r"too_long|[{}\[\]]|\bundefined\b|\bnull\b", error), error
    expect(widget.input).to_have_value(too_long)
    assert not Message.objects.exists()

    # 4,000 characters is the limit in code points: 4,000 emoji (8,000 UTF-16 units) pass.
    longest = "\U0001f600" * 4000
    widget.send(longest)
    widget.wait_reply_complete()
    expect(widget.input).to_have_value("")
    expect(widget.error).to_be_hidden()
    assert Message.objects.get(role=Message.Role.VISITOR).text == longest

    widget.handoff.click()
    expect(widget.notice).to_be_visible()
    notice = widget.notice.inner_text().strip()
    assert re.search(r"person|human|agent|someone|team|colleague", notice, re.I), notice
    conversation = Conversation.objects.get()
    for _ in range(50):
        if conversation.status == Conversation.Status.WAITING:
            break
        page.wait_for_timeout(100)
        conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.WAITING


def test_talk_to_a_person_works_before_any_message(page, stack, demo_site, llm):
    widget = _demo(page, stack)
    widget.open()
    widget.handoff.click()
    expect(widget.notice).to_be_visible()
    expect(widget.handoff).to_be_disabled()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conversation = Conversation.objects.first()
        if conversation is not None and conversation.status == Conversation.Status.WAITING:
            break
        page.wait_for_timeout(100)
    assert conversation is not None and conversation.status == Conversation.Status.WAITING
    assert not llm.requests, "a handoff must not ask the model anything"


def test_a_failed_reply_is_marked_and_explained(page, stack, demo_site, llm):
    llm.enqueue(Script(status=400, body={"error": {"message": "bad request"}}))
    widget = _demo(page, stack)
    widget.open()
    widget.send("Why is my refund late?")
    bubble = widget.bubbles("assistant").first
    expect(bubble).to_have_attribute("data-status", "failed")
    expect(widget.error).to_be_visible()
    error = widget.error.inner_text().strip()
    assert PLAIN_SENTENCE.match(error) and "reply_failed" not in error, error
    stored = Message.objects.get(role=Message.Role.ASSISTANT)
    assert stored.status == Message.Status.FAILED
    assert bubble.get_attribute("data-message-id") == str(stored.pk)
    # The visitor can ask again; the next reply works.
    llm.enqueue(Script(tokens=["It", " is", " on", " its", " way", "."], token_interval=0.01))
    widget.send("Can you try again?")
    second = widget.wait_reply_complete(count=2)
    expect(second.locator(".sb-text")).to_have_text("It is on its way.")
    expect(widget.error).to_be_hidden()
