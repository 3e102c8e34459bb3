"""What moderation looks like to a visitor, in a real browser, against the real stack.

A flagged answer must never be readable in the widget (gate mode) or must vanish
from it (after mode); the visitor is then told a person takes over, and can keep
writing. The model's handoff marker is never shown at all.
"""

from __future__ import annotations

from conversations.models import Conversation, Message, Site
from tests.browser.widget import Widget, expect
from tests.moderation_helpers import chat_requests
from tests.scripted_llm import Script

CLEAN = "Thanks for asking about your order."
ANSWER = f"{CLEAN} It ships tomorrow. You are a stupid useless idiot and everyone hates you. "
ANSWER += "Anything else?"
FLAGGED_WORDS = ("idiot", "hates you", "stupid")
REMOVED = "This answer was removed."
# What the widget shows while a person is being found (NOTICE.waiting in widget.js).
WAITING_NOTICE = "Connecting you with a person…"
WAITING_SUBTITLE = "Waiting for a person"

# Records, in the page, every state of the widget a visitor could have seen: the
# observer runs after each batch of DOM changes, before the next paint, so no
# rendered frame is missed (unlike polling from the test).
RECORDER_JS = """() => {
    const root = document.querySelector('#supportbot-widget').shadowRoot;
    const selector = '.sb-messages .sb-message:not(.sb-greeting)[data-role=assistant]';
    window.__seen = [];
    const record = () => {
        const sample = {
            assistant: [...root.querySelectorAll(selector)].map((b) => ({
                status: b.getAttribute('data-status'),
                text: b.querySelector('.sb-text') ? b.querySelector('.sb-text').textContent : '',
            })),
            all: root.textContent,
        };
        const prev = window.__seen[window.__seen.length - 1];
        if (!prev || prev.all !== sample.all || JSON.stringify(prev.assistant)
                !== JSON.stringify(sample.assistant)) {
            window.__seen.push(sample);
        }
    };
    record();
    new MutationObserver(record).observe(root, {
        subtree: true, childList: true, characterData: true, attributes: true,
    });
}"""


def words(text: str) -> list[str]:
    """Model-like tokens: each word with its leading space."""
    parts = text.split(" ")
    return [parts[0], *[" " + part for part in parts[1:]]]


def _open_demo(page, stack) -> Widget:
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    page.evaluate(RECORDER_JS)
    return widget


def _seen(page) -> list[dict]:
    return page.evaluate("() => window.__seen")


def _shadow_text(page) -> str:
    return page.evaluate(
        "() => document.querySelector('#supportbot-widget').shadowRoot.textContent"
    )


def _gate_mode(site: Site) -> Site:
    # The server reads the mode for each reply; the widget knows nothing of it.
    site.moderation_mode = Site.ModerationMode.GATE
    site.save(update_fields=["moderation_mode"])
    return site


def _expect_waiting_for_a_person(widget: Widget) -> None:
    """The widget's rendering of conversation status `waiting`."""
    expect(widget.notice).to_have_text(WAITING_NOTICE)
    expect(widget.page.locator(".sb-sub")).to_have_text(WAITING_SUBTITLE)
    expect(widget.handoff).to_be_disabled()


def test_gate_mode_never_shows_a_flagged_sentence_and_hands_over_to_a_person(
    page, stack, demo_site, llm
):
    site = _gate_mode(demo_site)
    llm.enqueue(Script(tokens=words(ANSWER), token_interval=0.03))
    widget = _open_demo(page, stack)

    widget.send("When will my order arrive?")
    assistant = widget.bubbles("assistant").first
    expect(assistant).to_have_attribute("data-status", "withdrawn")
    expect(assistant.locator(".sb-text")).to_have_text(REMOVED)
    notice = widget.last("system")
    expect(notice.locator(".sb-text")).to_have_text(site.handoff_notice)
    _expect_waiting_for_a_person(widget)

    seen = _seen(page)
    for sample in seen:
        for word in FLAGGED_WORDS:
            assert word not in sample["all"], f"{word!r} was shown: {sample}"
    streamed = [
        a["text"].strip() for s in seen for a in s["assistant"] if a["status"] == "streaming"
    ]
    # The clean first sentence passed the gate and was shown: proof the recorder
    # watched the reply stream, not only its end.
    assert any(text.startswith(CLEAN) for text in streamed), seen
    assert all(ANSWER.startswith(text) for text in streamed), streamed

    # A person has the conversation now, but the visitor can still write.
    widget.send("Hello? Is anyone there?")
    follow_up = widget.last("visitor")
    expect(follow_up.locator(".sb-text")).to_have_text("Hello? Is anyone there?")
    expect(follow_up).to_have_attribute("data-status", "complete")
    expect(widget.input).to_have_value("")
    stored = Message.objects.get(role=Message.Role.VISITOR, text="Hello? Is anyone there?")
    assert follow_up.get_attribute("data-message-id") == str(stored.pk)


def test_after_mode_removes_a_flagged_answer_from_the_widget(page, stack, demo_site, llm):
    llm.enqueue(Script(tokens=words(ANSWER), token_interval=0.03))
    widget = _open_demo(page, stack)

    widget.send("When will my order arrive?")
    assistant = widget.bubbles("assistant").first
    expect(assistant).to_have_attribute("data-status", "withdrawn")
    expect(assistant.locator(".sb-text")).to_have_text(REMOVED)
    expect(widget.last("system").locator(".sb-text")).to_have_text(demo_site.handoff_notice)

    # After mode streams before checking: the words were on screen, and are gone.
    assert any("idiot" in sample["all"] for sample in _seen(page)), "the answer never streamed"
    text = _shadow_text(page)
    for word in FLAGGED_WORDS:
        assert word not in text, f"{word!r} is still in the widget: {text!r}"

    # Nor does it come back from the widget's saved state or the server's history.
    page.reload()
    widget = Widget(page)
    widget.wait_ready()
    if not widget.is_open():
        widget.open()
    assistant = widget.bubbles("assistant").first
    expect(assistant).to_have_attribute("data-status", "withdrawn")
    expect(widget.panel).to_have_attribute("data-connection", "online")
    page.wait_for_timeout(500)  # a late replay of the streamed text would show by now
    expect(assistant.locator(".sb-text")).to_have_text(REMOVED)
    text = _shadow_text(page)
    for word in FLAGGED_WORDS:
        assert word not in text, f"{word!r} is back after a reload: {text!r}"


def test_a_flagged_visitor_message_gets_the_sites_reply_and_a_person(page, stack, demo_site, llm):
    widget = _open_demo(page, stack)

    widget.send("You are a worthless piece of shit, you stupid bot")
    reply = widget.wait_reply_complete()
    expect(reply.locator(".sb-text")).to_have_text(demo_site.flagged_input_reply)
    _expect_waiting_for_a_person(widget)

    assert chat_requests(llm) == [], "a flagged message must not reach the model"
    conversation = Conversation.objects.get()
    for _ in range(50):
        if conversation.status == Conversation.Status.WAITING:
            break
        page.wait_for_timeout(100)
        conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.WAITING


def test_the_models_handoff_marker_is_never_shown(page, stack, demo_site, llm):
    # After mode (the demo site's): text streams piece by piece, so a marker split
    # across pieces would reach the screen unless the server holds it back.
    tokens = ["I'm not sure about", " that, sorry.", " [[hand", "off]]"]
    llm.enqueue(Script(tokens=tokens, token_interval=0.15))
    widget = _open_demo(page, stack)

    widget.send("Can I pay with cryptocurrency?")
    reply = widget.wait_reply_complete()
    expect(reply.locator(".sb-text")).to_have_text("I'm not sure about that, sorry.")
    expect(widget.last("system").locator(".sb-text")).to_have_text(demo_site.handoff_notice)
    _expect_waiting_for_a_person(widget)

    seen = _seen(page)
    for sample in seen:
        for fragment in ("[[", "[hand", "handoff]]", "off]]"):
            assert fragment not in sample["all"], f"{fragment!r} was shown: {sample}"
    streamed = [a["text"] for s in seen for a in s["assistant"] if a["status"] == "streaming"]
    assert any(text.startswith("I'm not sure about") for text in streamed), seen
    assert Message.objects.get(role=Message.Role.ASSISTANT).text == (
        "I'm not sure about that, sorry."
    )
