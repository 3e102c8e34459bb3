"""The help-centre articles an answer drew on, shown as links under it.

The server's article titles and URLs are not trusted: a title is text, and only an
http(s) URL becomes a link.
"""

from __future__ import annotations

import json
import re

from conversations.knowledge.store import article_upsert
from conversations.models import Message
from tests.browser.widget import Widget, expect
from tests.scripted_llm import Script

PASSWORD_BODY = (
    "To reset your password, open the sign-in page and choose Forgot password. "
    "We email you a reset link; follow it to choose a new password. "
    "The reset link expires after one hour."
)
REFUND_BODY = (
    "Refunds for returned items reach your card within five working days "
    "of the return arriving at our warehouse. A refund covers the item price."
)
ANSWER = ["Choose", " Forgot", " password", " on", " the", " sign-in", " page", "."]
XSS_TITLE_IMG = "<img src=x onerror=window.__xss=1>"
XSS_TITLE_SCRIPT = "<script>window.__xss=1</script>"
XSS_TITLE_SVG = 'Password help "><svg onload=window.__xss=1>'
SOURCES = ".sb-sources"
LINKS = ".sb-sources a.sb-source"
ENTRIES = ".sb-sources .sb-source"

SOURCES_JS = """() => {
    const root = document.querySelector('#supportbot-widget').shadowRoot;
    return [...root.querySelectorAll('.sb-message')].map((m) => ({
        id: m.getAttribute('data-message-id'),
        status: m.getAttribute('data-status'),
        label: m.querySelector('.sb-sources')
            ? m.querySelector('.sb-sources').firstChild.textContent : null,
        entries: [...m.querySelectorAll('.sb-sources .sb-source')].map((e) => ({
            tag: e.tagName.toLowerCase(), text: e.textContent, href: e.getAttribute('href'),
            protocol: e.protocol || null, target: e.getAttribute('target'),
            rel: e.getAttribute('rel'), children: e.children.length,
        })),
    }));
}"""
AUDIT_JS = """() => {
    const root = document.querySelector('#supportbot-widget').shadowRoot;
    const log = root.querySelector('.sb-messages');
    return {
        bad: [...log.querySelectorAll('img, svg, script, iframe, object, embed, style')]
            .map((e) => e.outerHTML.slice(0, 120)),
        handlers: [...log.querySelectorAll('*')].flatMap((e) =>
            [...e.attributes].filter((a) => /^on/i.test(a.name))
                .map((a) => e.tagName + ' ' + a.name)),
        links: [...log.querySelectorAll('a')]
            .map((a) => ({href: a.getAttribute('href'), protocol: a.protocol})),
    };
}"""


def _stored_conversation(page, site, messages: int) -> dict:
    """The widget's saved state once it holds `messages` messages (saves are debounced)."""
    handle = page.wait_for_function(
        """([key, n]) => {
            const c = JSON.parse(localStorage.getItem(key) || 'null');
            return c && c.messages && c.messages.length >= n && c;
        }""",
        arg=[f"supportbot:{site.public_key}:conversation", messages],
    )
    return handle.json_value()


def test_an_answer_links_its_sources_and_keeps_them_across_a_reload(
    new_context, stack, demo_site, llm
):
    url = "https://help.example.com/articles/reset-password?lang=en"
    article, _ = article_upsert(
        site=demo_site, source="reset", title="Reset your password", body=PASSWORD_BODY, url=url
    )
    llm.enqueue(Script(tokens=ANSWER, token_interval=0.05))
    context = new_context()
    page = context.new_page()
    popups = []
    context.on("page", lambda popup: popups.append(popup))
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    widget.send("How do I reset my password?")
    assistant = widget.bubbles("assistant").first
    expect(assistant).to_be_attached()
    # Sources show under a finished answer, not under one still being written.
    status, listed = assistant.evaluate(
        "(b) => [b.getAttribute('data-status'), !!b.querySelector('.sb-sources')]"
    )
    assert status != "streaming" or not listed
    bubble = widget.wait_reply_complete()
    expect(bubble.locator(".sb-text")).to_have_text("Choose Forgot password on the sign-in page.")

    stored = Message.objects.get(role=Message.Role.ASSISTANT)
    assert stored.sources == [{"id": article.pk, "title": "Reset your password", "url": url}], (
        f"retrieval did not cite the article: {stored.sources!r}"
    )

    def check(bubble) -> None:
        expect(bubble.locator(SOURCES)).to_be_visible()
        expect(bubble.locator(SOURCES)).to_contain_text("Sources:")
        link = bubble.locator(LINKS)
        expect(link).to_have_count(1)
        expect(link).to_have_text("Reset your password")
        expect(link).to_have_attribute("href", url)
        expect(link).to_have_attribute("target", "_blank")
        assert set(link.get_attribute("rel").split()) == {"noopener", "noreferrer", "nofollow"}
        # The visitor's own bubble carries no sources.
        expect(widget.last("visitor").locator(SOURCES)).to_have_count(0)

    check(bubble)
    saved = _stored_conversation(page, demo_site, 2)
    assert [m.get("sources") for m in saved["messages"]] == [
        None,
        [{"title": "Reset your password", "url": url}],
    ], saved["messages"]

    link = bubble.locator(LINKS)
    link.click()
    for _ in range(100):
        if popups:
            break
        page.wait_for_timeout(50)
    assert len(popups) == 1
    popups[0].wait_for_load_state()
    assert popups[0].url == url
    assert popups[0].evaluate("() => window.opener") is None
    popups[0].close()

    # A reload: stored history first, then the server's replay; the link survives both.
    page.reload()
    widget = Widget(page)
    widget.wait_ready()
    if not widget.is_open():
        widget.open()
    expect(widget.panel).to_have_attribute("data-connection", "online")
    check(widget.wait_reply_complete())
    expect(page.locator(ENTRIES)).to_have_count(1)

    # With the server unreachable, the sources come from storage alone.
    offline = context.new_page()
    offline.route_web_socket(re.compile(r"/ws/v1/"), lambda ws: None)
    offline.goto(stack.http_url + "/")
    widget = Widget(offline)
    widget.wait_ready()
    widget.launcher.click()
    expect(widget.panel).to_be_visible()
    assert offline.locator(".sb-panel").get_attribute("data-connection") != "online"
    check(widget.wait_reply_complete())


def test_hostile_article_titles_and_urls_are_text_and_never_run(new_context, stack, demo_site, llm):
    long_title = "Password reset help " + "and more " * 25
    password_articles = [
        (XSS_TITLE_IMG, "javascript:window.__xss=1"),
        (XSS_TITLE_SCRIPT, "data:text/html,<script>window.__xss=1</script>"),
        (XSS_TITLE_SVG, 'https://example.com/"><svg onload=window.__xss=1>'),
        (long_title, "vbscript:msgbox(1)"),
    ]
    refund_articles = [
        ("Refund times", "JaVaScRiPt:window.__xss=1"),
        ("Refunds for returns", "/admin/"),
        ("Refund amounts", "https://"),
        ("Refund card", " \tjava\nscript:window.__xss=1"),
    ]
    for i, (title, url) in enumerate(password_articles):
        article_upsert(site=demo_site, source=f"p{i}", title=title, body=PASSWORD_BODY, url=url)
    for i, (title, url) in enumerate(refund_articles):
        article_upsert(site=demo_site, source=f"r{i}", title=title, body=REFUND_BODY, url=url)
    llm.enqueue(Script(tokens=ANSWER, token_interval=0.01))
    llm.enqueue(Script(tokens=["Within", " five", " working", " days", "."], token_interval=0.01))

    context = new_context()
    page = context.new_page()
    popups = []
    context.on("page", lambda popup: popups.append(popup))
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    widget.send("I forgot my password, how do I reset it?")
    widget.wait_reply_complete()
    widget.send("When will my refund for returned items arrive?")
    widget.wait_reply_complete(count=2)

    answers = list(Message.objects.filter(role=Message.Role.ASSISTANT).order_by("seq"))
    cited = [{s["title"] for s in a.sources} for a in answers]
    assert cited == [
        {t for t, _ in password_articles},
        {t for t, _ in refund_articles},
    ], f"retrieval did not cite every article: {[a.sources for a in answers]!r}"
    page.wait_for_timeout(500)  # onerror/onload handlers, if any got in, would have run

    rendered = {m["id"]: m for m in page.evaluate(SOURCES_JS)}
    expected_links = {"https://example.com/%22%3E%3Csvg%20onload=window.__xss=1%3E"}
    for answer, articles in zip(answers, (password_articles, refund_articles), strict=True):
        bubble = rendered[str(answer.pk)]
        assert bubble["label"] == "Sources:", bubble
        entries = bubble["entries"]
        assert len(entries) == len(articles), entries
        by_title = {e["text"]: e for e in entries}
        for title, _ in articles:
            shown = title if len(title) <= 120 else title[:119].rstrip() + "…"
            assert shown in by_title, (shown, entries)
        for entry in entries:
            assert entry["children"] == 0, entry  # text only, no markup inside
            if entry["tag"] == "a":
                assert entry["protocol"] in ("http:", "https:"), entry
                assert entry["href"] in expected_links, entry
                assert entry["target"] == "_blank", entry
                assert set(entry["rel"].split()) == {"noopener", "noreferrer", "nofollow"}
            else:
                assert entry["tag"] == "span" and entry["href"] is None, entry
    links = [e for m in rendered.values() for e in m["entries"] if e["tag"] == "a"]
    assert [e["text"] for e in links] == [XSS_TITLE_SVG], links
    expect(page.locator(ENTRIES, has_text=XSS_TITLE_IMG)).to_have_count(1)
    expect(page.locator(ENTRIES, has_text=XSS_TITLE_SCRIPT)).to_have_count(1)

    audit = page.evaluate(AUDIT_JS)
    assert audit["bad"] == [] and audit["handlers"] == [], audit
    for link in audit["links"]:
        assert link["protocol"] in ("http:", "https:"), link

    # Clicking the plain entries goes nowhere and runs nothing.
    before = page.url
    plain = page.locator(".sb-sources span.sb-source")
    assert plain.count() == 7
    for i in range(plain.count()):
        plain.nth(i).click()
    page.wait_for_timeout(300)
    assert popups == [] and page.url == before
    # The one https link opens the encoded URL, not markup.
    page.locator(LINKS).click()
    for _ in range(100):
        if popups:
            break
        page.wait_for_timeout(50)
    assert len(popups) == 1
    popups[0].wait_for_load_state()
    assert popups[0].url == "https://example.com/%22%3E%3Csvg%20onload=window.__xss=1%3E"
    page.bring_to_front()
    page.wait_for_timeout(300)
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert popups[0].evaluate("() => typeof window.__xss") == "undefined"
    assert new_context.errors.dialogs == []

    # After a reload (storage, then replay) the same: text, no hostile links.
    page.reload()
    widget = Widget(page)
    widget.wait_ready()
    if not widget.is_open():
        widget.open()
    expect(widget.panel).to_have_attribute("data-connection", "online")
    expect(page.locator(ENTRIES)).to_have_count(8)
    expect(page.locator(LINKS)).to_have_count(1)
    page.wait_for_timeout(300)
    audit = page.evaluate(AUDIT_JS)
    assert audit["bad"] == [] and audit["handlers"] == [], audit
    assert page.evaluate("() => typeof window.__xss") == "undefined"


def _mocked_server(frames_after_ready: list[dict]):
    """A websocket stand-in: answers hello with ready and the given frames."""

    def handler(ws) -> None:
        def on_message(raw) -> None:
            frame = json.loads(raw)
            if frame.get("type") == "hello":
                conversation = {"id": "00000000-0000-4000-8000-000000000000", "status": "bot"}
                ws.send(json.dumps({"type": "ready", "conversation": conversation, "last_seq": 0}))
                for f in frames_after_ready:
                    ws.send(json.dumps(f))
            elif frame.get("type") == "ping":
                ws.send(json.dumps({"type": "pong"}))

        ws.on_message(on_message)

    return handler


def _msg(id_: str, seq: int, status: str, sources: object, text: str = "An answer.") -> dict:
    return {
        "id": id_, "seq": seq, "role": "assistant", "text": text, "status": status,
        "created_at": "2025-01-31T09:15:02+00:00", "sources": sources,
    }  # fmt: skip


def test_at_most_five_sources_and_none_under_unfinished_answers(new_context, stack, demo_site):
    """Malformed `sources` from a server: entries skipped, the list and titles capped."""
    many = [
        None, "https://str.example/", {"title": 5, "url": "https://num.example/"},
        {"title": "   ", "url": "https://blank.example/"},
        {"title": "One", "url": "https://a.example/1"},
        {"title": "Two\n\n  lines", "url": "http://a.example/2"},
        {"title": "T" * 300, "url": "https://a.example/3"},
        {"title": "Four", "url": "mailto:help@example.com"},
        {"title": "Five", "url": "//evil.example/x"},
        {"title": "Six", "url": "https://a.example/6"},
    ]  # fmt: skip
    listed = [{"title": "Listed", "url": "https://a.example/l"}]
    frames = [
        {"type": "message", "message": _msg("1", 1, "complete", many)},
        {"type": "message", "message": _msg("2", 2, "streaming", listed, text="")},
        {"type": "message", "message": _msg("3", 3, "failed", listed, text="Cut")},
        {"type": "message", "message": _msg("4", 4, "complete", listed)},
        {"type": "withdrawn", "message_id": "4", "reason": "moderation"},
        {"type": "message", "message": _msg("5", 5, "complete", {"title": "not a list"})},
    ]
    context = new_context()
    page = context.new_page()
    page.route_web_socket(re.compile(r"/ws/v1/"), _mocked_server(frames))
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    expect(widget.bubbles("assistant")).to_have_count(5)
    expect(widget.panel).to_have_attribute("data-connection", "online")

    rendered = {m["id"]: m for m in page.evaluate(SOURCES_JS)}
    entries = rendered["1"]["entries"]
    assert [e["text"] for e in entries] == ["One", "Two lines", "T" * 119 + "…", "Four", "Five"]
    assert [e["href"] for e in entries] == [
        "https://a.example/1", "http://a.example/2", "https://a.example/3", None, None,
    ]  # fmt: skip
    assert [e["tag"] for e in entries] == ["a", "a", "a", "span", "span"]
    for i in ("2", "3", "4", "5"):
        assert rendered[i]["label"] is None and rendered[i]["entries"] == [], rendered[i]
    expect(widget.bubbles("assistant").nth(1)).to_have_attribute("data-status", "streaming")
    expect(widget.bubbles("assistant").nth(3)).to_have_attribute("data-status", "withdrawn")
