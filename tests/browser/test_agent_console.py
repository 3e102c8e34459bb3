"""The live agent console in a real browser, next to a visitor's widget in another.

A visitor asks for a person; the agent's console (already open) shows the
conversation without a reload; the agent takes it over, answers, sees the visitor
typing, writes an internal note and hands back to the bot, whose next answer both
see live. Markup from the visitor, the model and the agent stays text in the console.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from conversations.models import Conversation, InternalNote, Message
from conversations.roles import ensure_agents_group
from tests.browser.widget import Widget, expect
from tests.scripted_llm import Script
from tests.stack import AsgiServer, free_port

AGENT_FIRST, AGENT_LAST = "Sam", "Rivera"
AGENT_NAME = f"{AGENT_FIRST} {AGENT_LAST}"

BOT_TOKENS = [
    "Returns", " are", " free", " within", " thirty", " days", " of", " delivery", ".",
]  # fmt: skip
BOT_REPLY = "".join(BOT_TOKENS)

XSS_PAYLOADS = [
    "<img src=x onerror=window.__xss=1>",
    "<script>window.__xss=1</script>",
    '"><svg onload=window.__xss=1>',
    '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    '<a href="javascript:window.__xss=1">link</a>',
    "<b onmouseover=window.__xss=1>bold</b>",
]
# The offline moderator flags this (as in test_moderation.py).
FLAGGED_ANSWER = (
    "Thanks for asking about your order. It ships tomorrow. "
    "You are a stupid useless idiot and everyone hates you. Anything else?"
)
FORBIDDEN = "img, svg, script, iframe, a, b, style, object, embed, details, form, input"

AUDIT_JS = """(forbidden) => {
    const roots = [...document.querySelectorAll(
        '.ac-timeline, .ac-queue, .ac-thread-head, .ac-alert')];
    const bad = roots.flatMap((r) => [...r.querySelectorAll(forbidden)]
        .map((e) => e.outerHTML.slice(0, 120)));
    const handlers = roots.flatMap((r) => [...r.querySelectorAll('*')].flatMap((e) =>
        [...e.attributes].filter((a) => /^on/i.test(a.name) || a.name === 'srcdoc')
            .map((a) => e.tagName + ' ' + a.name)));
    return {bad, handlers};
}"""

# Every change of the newest assistant message in the console, recorded in the page.
RECORD_JS = """() => {
    window.__acSamples = [];
    const record = () => {
        const all = document.querySelectorAll('.ac-message[data-role=assistant]');
        const m = all[all.length - 1];
        if (!m) return;
        const sample = {
            id: m.getAttribute('data-message-id'),
            status: m.getAttribute('data-status'),
            text: m.querySelector('.ac-text').textContent,
        };
        const prev = window.__acSamples[window.__acSamples.length - 1];
        if (!prev || prev.text !== sample.text || prev.status !== sample.status) {
            window.__acSamples.push(sample);
        }
    };
    new MutationObserver(record).observe(document.querySelector('.ac-timeline'), {
        subtree: true, childList: true, characterData: true, attributes: true,
    });
}"""


# --- Helpers -------------------------------------------------------------------------


def _user(username: str, *, staff: bool, agent: bool, first: str = "", last: str = ""):
    from django.contrib.auth.models import User

    user = User.objects.create_user(
        username, password="not-used-0123456789", first_name=first, last_name=last
    )
    user.is_staff = staff
    user.save(update_fields=["is_staff"])
    if agent:
        user.groups.add(ensure_agents_group())
    return user


def _session_cookie(user) -> str:
    """A session for this user, as the admin login would make it."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _logged_in_context(new_context, stack, user):
    context = new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": _session_cookie(user), "url": stack.http_url}]
    )
    return context


def _open_console(new_context, stack, user):
    page = _logged_in_context(new_context, stack, user).new_page()
    page.goto(stack.http_url + "/agent/")
    expect(page.locator(".ac-connection")).to_have_attribute("data-state", "online")
    return page


def _visitor(new_context, stack) -> Widget:
    page = new_context().new_page()
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    return widget


def _wait_for(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _the_conversation() -> Conversation:
    return _wait_for(Conversation.objects.first, "the visitor's conversation")


def _message(console, role: str, status: str = "complete"):
    return console.locator(f".ac-message[data-role={role}][data-status={status}]")


# --- Tests ---------------------------------------------------------------------------


def test_an_agent_takes_over_answers_and_hands_back_live(new_context, stack, demo_site, llm):
    agent = _user("sam", staff=True, agent=True, first=AGENT_FIRST, last=AGENT_LAST)
    console = _open_console(new_context, stack, agent)
    queue_items = console.locator(".ac-queue-item")
    expect(queue_items).to_have_count(0)
    console.locator(".ac-open-input").fill(str(uuid.uuid4()))
    console.locator(".ac-open-input").press("Enter")
    expect(console.locator(".ac-alert")).to_contain_text("No such conversation")
    expect(console.locator(".ac-thread")).not_to_have_attribute(
        "data-conversation-id", re.compile(".")
    )

    # The visitor asks the bot first, then for a person.
    llm.enqueue(Script(tokens=["Happy", " to", " help", "."], token_interval=0.02))
    widget = _visitor(new_context, stack)
    widget.send("Where is my parcel?")
    widget.wait_reply_complete()
    widget.handoff.click()
    conversation = _the_conversation()
    cid = str(conversation.pk)

    # The console shows it in the queue without a reload, waiting.
    item = console.locator(f".ac-queue-item[data-conversation-id='{cid}']")
    expect(item).to_have_attribute("data-status", "waiting")
    expect(item).to_contain_text(demo_site.name)
    expect(item).to_contain_text("visitor asked for a person")

    item.click()
    thread = console.locator(f".ac-thread[data-conversation-id='{cid}']")
    expect(thread).to_have_attribute("data-status", "waiting")
    expect(_message(console, "visitor").locator(".ac-text")).to_have_text("Where is my parcel?")
    expect(_message(console, "assistant").locator(".ac-text")).to_have_text("Happy to help.")
    expect(console.locator(".ac-status-change[data-status=waiting]")).to_contain_text(
        "visitor asked for a person"
    )
    expect(console.locator("textarea.ac-input")).to_be_disabled()

    # Take over: the visitor is told, the console lets the agent write.
    console.locator(".ac-take-over").click()
    expect(thread).to_have_attribute("data-status", "agent")
    expect(item).to_have_attribute("data-status", "agent")
    expect(item).to_contain_text(AGENT_NAME)
    expect(widget.notice).to_have_text("An agent joined")
    expect(widget.last("system").locator(".sb-text")).to_have_text(
        f"{AGENT_NAME} from our team joined the conversation."
    )
    expect(console.locator(".ac-status-change[data-status=agent]")).to_contain_text(
        f"taken over by {AGENT_NAME}"
    )
    expect(console.locator(".ac-take-over")).to_be_hidden()
    composer = console.locator("textarea.ac-input")
    expect(composer).to_be_enabled()

    # The agent replies (Enter sends); the visitor sees it live, as the agent's.
    composer.fill("Hi, I'm Sam. Let me check your parcel.")
    composer.press("Enter")
    expect(composer).to_have_value("")
    expect(widget.last("agent").locator(".sb-text")).to_have_text(
        "Hi, I'm Sam. Let me check your parcel."
    )
    agent_row = _wait_for(
        lambda: Message.objects.filter(role=Message.Role.AGENT).first(), "the agent's message"
    )
    assert agent_row.author_id == agent.pk and agent_row.conversation_id == conversation.pk
    echoed = console.locator(f".ac-message[data-message-id='{agent_row.pk}']")
    expect(echoed).to_have_attribute("data-role", "agent")
    expect(echoed).to_have_attribute("data-status", "complete")
    expect(echoed.locator(".ac-text")).to_have_text("Hi, I'm Sam. Let me check your parcel.")
    expect(console.locator(".ac-message[data-status=pending]")).to_have_count(0)

    # Shift+Enter is a new line, not a send.
    composer.press("Shift+Enter")
    expect(composer).to_have_value("\n")
    composer.fill("")

    # The visitor types: the console shows it; sending ends it.
    typing = console.locator(".ac-typing")
    expect(typing).to_be_hidden()
    widget.input.press_sequentially("Thanks, it was order 1042", delay=30)
    expect(typing).to_be_visible()
    widget.send_button.click()
    expect(typing).to_be_hidden()
    expect(_message(console, "visitor").last.locator(".ac-text")).to_have_text(
        "Thanks, it was order 1042"
    )

    # An internal note: in the console, labelled internal, never at the visitor's.
    console.locator("textarea.ac-note-input").fill("Order 1042 was split into two parcels.")
    console.locator(".ac-note-send").click()
    note = console.locator(".ac-note")
    expect(note).to_contain_text("Order 1042 was split into two parcels.")
    expect(note).to_contain_text("internal")
    expect(note).to_contain_text(AGENT_NAME)
    assert InternalNote.objects.get().author_id == agent.pk
    assert "split into two parcels" not in (widget.log.text_content() or "")

    # Hand back: gone from the queue, the visitor is back with the assistant.
    console.locator(".ac-hand-back").click()
    expect(thread).to_have_attribute("data-status", "bot")
    expect(queue_items).to_have_count(0)
    expect(widget.last("system").locator(".sb-text")).to_have_text(
        "You're chatting with our assistant again."
    )
    expect(console.locator(".ac-status-change[data-status=bot]")).to_contain_text(
        f"handed back to the assistant by {AGENT_NAME}"
    )
    expect(composer).to_be_disabled()
    expect(console.locator(".ac-take-over")).to_be_visible()

    # The bot answers the next question; the console follows it as it streams.
    console.evaluate(RECORD_JS)
    llm.enqueue(Script(tokens=BOT_TOKENS, token_interval=0.12))
    widget.send("What is your returns policy?")
    expect(widget.last("assistant").locator(".sb-text")).to_have_text(BOT_REPLY)
    live = _message(console, "assistant").last
    expect(live.locator(".ac-text")).to_have_text(BOT_REPLY)
    stored = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("-seq").first()
    assert stored.text == BOT_REPLY
    expect(live).to_have_attribute("data-message-id", str(stored.pk))
    samples = console.evaluate("() => window.__acSamples")
    partial = [s["text"] for s in samples if s["status"] == "streaming" and s["text"]]
    assert len(set(partial)) >= 2, f"the console did not show the reply growing: {samples}"
    assert all(BOT_REPLY.startswith(text) for text in partial), samples

    # The console saw everything in order, once.
    rows = console.evaluate(
        """() => [...document.querySelectorAll('.ac-message')].map((m) => [
            m.getAttribute('data-message-id'), m.getAttribute('data-role')])"""
    )
    expected = [[str(m.pk), m.role] for m in Message.objects.order_by("seq")]
    assert rows == expected
    expect(console.locator(".ac-alert")).to_be_hidden()
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.BOT
    assert conversation.assigned_agent_id is None


def test_markup_from_visitor_model_and_agent_is_text_in_the_console(
    new_context, stack, demo_site, llm
):
    agent = _user("sam", staff=True, agent=True, first=AGENT_FIRST, last=AGENT_LAST)
    console = _open_console(new_context, stack, agent)
    payload = "\n".join(XSS_PAYLOADS)
    llm.enqueue(Script(tokens=[payload[i : i + 5] for i in range(0, len(payload), 5)]))

    # A stored exchange, then the agent opens the conversation by its id.
    widget = _visitor(new_context, stack)
    widget.send(payload)
    widget.wait_reply_complete()
    cid = str(_the_conversation().pk)
    console.locator(".ac-open-input").fill(cid)
    console.locator(".ac-open-input").press("Enter")
    expect(console.locator(f".ac-thread[data-conversation-id='{cid}']")).to_be_visible()
    expect(_message(console, "assistant").locator(".ac-text")).to_have_text(payload)

    # The same markup arriving live (message, deltas, done), and in the queue item
    # (the ticket's subject is the visitor's first message).
    llm.enqueue(Script(tokens=[payload[i : i + 3] for i in range(0, len(payload), 3)]))
    widget.send("Again: " + payload)
    widget.wait_reply_complete(count=2)
    expect(_message(console, "assistant")).to_have_count(2)
    widget.handoff.click()
    item = console.locator(f".ac-queue-item[data-conversation-id='{cid}']")
    expect(item).to_contain_text(XSS_PAYLOADS[0])

    # An agent's own markup, too.
    console.locator(".ac-take-over").click()
    composer = console.locator("textarea.ac-input")
    expect(composer).to_be_enabled()
    composer.fill(XSS_PAYLOADS[2])
    console.locator(".ac-send").click()
    expect(_message(console, "agent").locator(".ac-text")).to_have_text(XSS_PAYLOADS[2])
    expect(widget.last("agent").locator(".sb-text")).to_have_text(XSS_PAYLOADS[2])
    console.locator("textarea.ac-note-input").fill(XSS_PAYLOADS[0])
    console.locator(".ac-note-send").click()
    expect(console.locator(".ac-note")).to_contain_text(XSS_PAYLOADS[0])
    console.wait_for_timeout(500)  # onerror/onload handlers, if any got in, would have run

    texts = console.locator(".ac-message .ac-text").all_text_contents()
    assert texts[0] == payload
    assert texts[1] == payload
    assert texts[2] == "Again: " + payload
    assert texts[3] == payload
    audit = console.evaluate(AUDIT_JS, FORBIDDEN)
    assert audit["bad"] == [], audit["bad"]
    assert audit["handlers"] == [], audit["handlers"]
    assert console.evaluate("() => typeof window.__xss") == "undefined"
    assert widget.page.evaluate("() => typeof window.__xss") == "undefined"
    assert new_context.errors.dialogs == []


def test_a_withdrawn_answer_shows_staff_what_was_withheld(new_context, stack, demo_site, llm):
    agent = _user("sam", staff=True, agent=True, first=AGENT_FIRST, last=AGENT_LAST)
    console = _open_console(new_context, stack, agent)
    llm.enqueue(Script(tokens=["Hello", "!"], token_interval=0.02))
    widget = _visitor(new_context, stack)
    widget.send("Hi there")
    widget.wait_reply_complete()
    cid = str(_the_conversation().pk)
    console.locator(".ac-open-input").fill(cid)
    console.locator(".ac-open-input").press("Enter")
    thread = console.locator(f".ac-thread[data-conversation-id='{cid}']")
    expect(thread).to_have_attribute("data-status", "bot")

    # The demo site moderates after the answer: it streams, then is withdrawn.
    words = FLAGGED_ANSWER.split(" ")
    llm.enqueue(Script(tokens=[words[0], *[" " + w for w in words[1:]]], token_interval=0.03))
    widget.send("Where is my order?")
    expect(widget.last("assistant")).to_have_attribute("data-status", "withdrawn")
    withdrawn = console.locator(".ac-message[data-role=assistant][data-status=withdrawn]")
    expect(withdrawn.locator(".ac-text")).to_have_text(FLAGGED_ANSWER)
    expect(withdrawn).to_contain_text("withdrawn (not shown to the visitor)")
    expect(withdrawn).to_contain_text("flagged")
    struck = withdrawn.locator(".ac-text").evaluate("(e) => getComputedStyle(e).textDecorationLine")
    assert "line-through" in struck
    stored = Message.objects.get(status=Message.Status.WITHDRAWN)
    expect(withdrawn).to_have_attribute("data-message-id", str(stored.pk))
    # A withdrawn answer hands the conversation to a person.
    expect(thread).to_have_attribute("data-status", "waiting")
    expect(console.locator(f".ac-queue-item[data-conversation-id='{cid}']")).to_be_visible()


def test_the_console_reconnects_and_reopens_the_conversation(new_context, stack, demo_site, llm):
    agent = _user("sam", staff=True, agent=True, first=AGENT_FIRST, last=AGENT_LAST)
    # The console runs on a web server of its own that this test restarts; the
    # session cookie is the host's, whatever the port.
    port = free_port()
    servers = [AsgiServer(stack.env, stack.log_dir, port=port)]
    try:
        console = _logged_in_context(new_context, stack, agent).new_page()
        console.goto(f"http://127.0.0.1:{port}/agent/")
        connection = console.locator(".ac-connection")
        expect(connection).to_have_attribute("data-state", "online")

        widget = _visitor(new_context, stack)
        widget.handoff.click()
        cid = str(_the_conversation().pk)
        console.locator(f".ac-queue-item[data-conversation-id='{cid}']").click()
        thread = console.locator(f".ac-thread[data-conversation-id='{cid}']")
        expect(thread).to_have_attribute("data-status", "waiting")
        console.locator(".ac-take-over").click()
        expect(thread).to_have_attribute("data-status", "agent")

        servers[0].kill()
        servers[0].stop()
        expect(connection).to_have_attribute("data-state", "offline", timeout=10_000)
        # While the console is away the visitor writes.
        widget.send("Are you still there?")
        _wait_for(
            lambda: Message.objects.filter(text="Are you still there?").exists(),
            "the visitor's message",
        )
        servers.append(AsgiServer(stack.env, stack.log_dir, port=port))

        expect(connection).to_have_attribute("data-state", "online", timeout=30_000)
        expect(_message(console, "visitor").last.locator(".ac-text")).to_have_text(
            "Are you still there?"
        )
        expect(thread).to_have_attribute("data-status", "agent")
        composer = console.locator("textarea.ac-input")
        expect(composer).to_be_enabled()
        composer.fill("Yes, still here.")
        composer.press("Enter")
        expect(widget.last("agent").locator(".sb-text")).to_have_text("Yes, still here.")
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("staff", [False, True], ids=["not-staff", "staff-not-agent"])
def test_only_agents_get_the_page_and_the_socket(stack, staff):
    user = _user(f"user-{staff}", staff=staff, agent=False)
    cookie = {"sessionid": _session_cookie(user)}
    ws_url = stack.ws_url + "/ws/v1/agent/"

    page = httpx.get(stack.http_url + "/agent/", cookies=cookie, follow_redirects=False)
    assert page.status_code == 403
    assert "ac-queue" not in page.text

    with ws_connect(
        ws_url,
        origin=stack.http_url,
        additional_headers={"Cookie": f"sessionid={cookie['sessionid']}"},
        open_timeout=10,
    ) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403

    # Nobody logged in: the page sends them to the admin's login, the socket refuses.
    anonymous = httpx.get(stack.http_url + "/agent/", follow_redirects=False)
    assert anonymous.status_code == 302
    assert anonymous.headers["location"].startswith("/admin/login/")
    with ws_connect(ws_url, origin=stack.http_url, open_timeout=10) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


def test_commands_on_an_unknown_conversation_say_not_found(stack):
    agent = _user("sam", staff=True, agent=True)
    headers = {"Cookie": f"sessionid={_session_cookie(agent)}"}
    with ws_connect(
        stack.ws_url + "/ws/v1/agent/", origin=stack.http_url, additional_headers=headers
    ) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "queue"
        for kind in ("open", "take_over", "message", "note", "hand_back", "close"):
            frame = {"type": kind, "conversation_id": str(uuid.uuid4()), "text": "Hello"}
            socket.send(json.dumps(frame))
            answer = json.loads(socket.recv(timeout=10))
            assert (answer["type"], answer["code"]) == ("error", "not_found"), (kind, answer)
