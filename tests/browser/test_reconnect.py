"""The web server dies mid-reply and comes back on the same port: the widget heals."""

from __future__ import annotations

import re
import time

from conversations.models import Message
from tests.browser.widget import Widget, expect
from tests.scripted_llm import Script
from tests.stack import AsgiServer, free_port

TOKENS = [f" t{i:02d}" if i else "t00" for i in range(40)]


def _own_server_origin(demo_site) -> tuple[int, str]:
    """A port for a web server this test may kill, allowed to embed the widget."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    demo_site.allowed_origins = [*demo_site.allowed_origins, origin]
    demo_site.save(update_fields=["allowed_origins"])
    return port, origin


def test_the_widget_reconnects_after_a_server_restart_and_shows_the_reply_once(
    page, stack, demo_site, llm
):
    port, origin = _own_server_origin(demo_site)
    llm.enqueue(Script(tokens=TOKENS, token_interval=0.15))

    servers = [AsgiServer(stack.env, stack.log_dir, port=port)]
    try:
        page.goto(origin + "/")
        widget = Widget(page)
        widget.open()
        widget.send("Tell me everything about my order")
        assistant = widget.bubbles("assistant").first
        # A few deltas in (about a second of a six-second reply), pull the plug.
        expect(assistant.locator(".sb-text")).to_contain_text(re.compile(r"t04"))
        servers[0].kill()
        servers[0].stop()
        killed_at = time.monotonic()
        expect(widget.panel).not_to_have_attribute("data-connection", "online", timeout=10_000)
        expect(assistant).not_to_have_attribute("data-status", "complete")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - killed_at)))
        servers.append(AsgiServer(stack.env, stack.log_dir, port=port))

        expect(widget.panel).to_have_attribute("data-connection", "online", timeout=30_000)
        expect(assistant).to_have_attribute("data-status", "complete", timeout=30_000)
        stored = Message.objects.get(role=Message.Role.ASSISTANT)
        assert stored.status == Message.Status.COMPLETE
        assert stored.text == "".join(TOKENS)
        expect(assistant.locator(".sb-text")).to_have_text(stored.text)
        page.wait_for_timeout(500)  # a duplicate from the replay would show by now
        bubbles = widget.snapshot()
        assert [(b["role"], b["id"]) for b in bubbles] == [
            ("visitor", str(Message.objects.get(role=Message.Role.VISITOR).pk)),
            ("assistant", str(stored.pk)),
        ], bubbles
        assert bubbles[1]["text"] == stored.text
    finally:
        for server in servers:
            server.stop()


def test_a_reload_mid_reply_resumes_the_stream_once(page, stack, demo_site, llm):
    tokens = [f" r{i:02d}" if i else "r00" for i in range(24)]
    llm.enqueue(Script(tokens=tokens, token_interval=0.1))
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    widget.send("What is your returns policy?")
    expect(widget.bubbles("assistant").first.locator(".sb-text")).to_contain_text("r03")

    page.reload()
    widget = Widget(page)
    widget.wait_ready()
    if not widget.is_open():
        widget.open()
    assistant = widget.bubbles("assistant").first
    expect(assistant).to_have_attribute("data-status", "complete")
    stored = Message.objects.get(role=Message.Role.ASSISTANT)
    assert stored.text == "".join(tokens)
    expect(assistant.locator(".sb-text")).to_have_text(stored.text)
    page.wait_for_timeout(500)  # a duplicate from the replay would show by now
    assert [(b["role"], b["status"]) for b in widget.snapshot()] == [
        ("visitor", "complete"),
        ("assistant", "complete"),
    ], widget.snapshot()


def test_a_message_typed_while_the_server_is_down_is_sent_once_when_it_returns(
    page, stack, demo_site, llm
):
    port, origin = _own_server_origin(demo_site)
    llm.enqueue(Script(tokens=["First", " answer"]))
    llm.enqueue(Script(tokens=["Sent", " once"]), match="while you were away")

    servers = [AsgiServer(stack.env, stack.log_dir, port=port)]
    try:
        page.goto(origin + "/")
        widget = Widget(page)
        widget.open()
        widget.send("Hello there")
        widget.wait_reply_complete(1)
        servers[0].kill()
        servers[0].stop()
        expect(widget.panel).not_to_have_attribute("data-connection", "online", timeout=10_000)

        widget.send("Did you get this while you were away?")
        offline = widget.last("visitor")
        expect(offline).not_to_have_attribute("data-status", "complete")
        page.wait_for_timeout(1500)  # a few reconnect attempts fail meanwhile
        servers.append(AsgiServer(stack.env, stack.log_dir, port=port))

        expect(widget.panel).to_have_attribute("data-connection", "online", timeout=30_000)
        expect(offline).to_have_attribute("data-status", "complete", timeout=30_000)
        widget.wait_reply_complete(2, timeout=30_000)
        page.wait_for_timeout(500)  # a duplicate would show by now
        stored = list(
            Message.objects.filter(role=Message.Role.VISITOR).values_list("text", "client_id")
        )
        assert [text for text, _ in stored] == [
            "Hello there",
            "Did you get this while you were away?",
        ]
        assert offline.get_attribute("data-client-id") == stored[1][1]
        assert [(b["role"], b["text"]) for b in widget.snapshot()] == [
            ("visitor", "Hello there"),
            ("assistant", "First answer"),
            ("visitor", "Did you get this while you were away?"),
            ("assistant", "Sent once"),
        ], widget.snapshot()
    finally:
        for server in servers:
            server.stop()
