"""Every payload of tests/xss_payloads.py, through every channel, is inert on every surface.

Channels: a visitor types it (widget), the model streams it (scripted model server), an
agent sends it and writes it as an internal note (console), staff put it in a site's
name, widget title and greeting, an agent's name, and help-centre article titles and
URLs. Surfaces: the widget (live, and again from storage and the server's replay), the
agent console (live and from a snapshot), the admin's transcript, ticket and list
pages, and the JSON and CSV exports, downloaded and opened in the browser.

Each page is checked the same way: the canary ``__xss`` every payload calls never
fires, no dialog opens, nothing navigates or opens a window, no element a payload
tried to create exists (the message containers hold only the elements their own
code makes), no link has a javascript:, data: or vbscript: URL, and the text is
shown as written (Markdown views: as rendered; see ``Payload.markdown``).

The widget runs on a plain host page without a Content-Security-Policy, and the
console and admin pages are opened with Playwright's ``bypass_csp``: the policy would
block inline scripts and handlers, and this suite tests the rendering itself, not the
policy (tests/browser/test_csp.py covers that).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from typing import Any
from urllib.parse import quote

from conversations import handoff
from conversations.knowledge.store import article_upsert
from conversations.models import Conversation, InternalNote, Message, Site, Ticket
from tests.browser.test_agent_console import _session_cookie, _user, _wait_for
from tests.browser.widget import MESSAGE, Widget, expect, script_tag
from tests.scripted_llm import Script
from tests.xss_payloads import (
    BY_NAME,
    FORMULA_PREFIXES,
    PAYLOADS,
    TYPED,
    URL_PAYLOADS,
    Payload,
    collapse,
)

# RATE_VISITOR_MESSAGES_PER_MINUTE is 20 in tests: each visitor sends at most this many.
BATCH = 16
# A visitor's first message is the subject of the ticket when it asks for a person:
# each visitor starts with one of these.
SUBJECTS = ["rtl-override", "mxss-textarea", "attr-double", "long-line", "script-close"]

# Staff-controlled text shown to visitors and staff.
SITE_NAME = "<svg class=xss onload=__xss('site-name')> =1+1"
WIDGET_TITLE = "<img src=x class=xss onerror=__xss('title')>"
GREETING = (
    "Hi! [x](javascript:__xss('greeting')) <img src=x class=xss onerror=__xss('greeting')> "
    "**<svg class=xss onload=__xss('greeting')>** [ok](https://ok.example/greeting)"
)
GREETING_SHOWN = (
    "Hi! x <img src=x class=xss onerror=__xss('greeting')> "
    "<svg class=xss onload=__xss('greeting')> ok"
)
AGENT_FIRST = "@SUM(1+1)*cmd|' /C calc'!A0"
# Closes the console's json_script block that carries the name, if it could.
AGENT_LAST = "</script><img src=x class=xss onerror=__xss('agent-name')>"

# Reports the payload's name to the test; installed in every frame before any script.
CANARY_JS = """(() => {
    const hits = [];
    const report = (name) => {
        hits.push(String(name));
        try { window.__xssReport(String(name)); } catch (e) {}
    };
    Object.defineProperty(window, '__xss', {value: report, writable: false, configurable: false});
    Object.defineProperty(window, '__xssHits', {value: hits, writable: false, configurable: false});
})();"""

# Problems on a page: elements a payload made, handlers, dangerous URLs, and (in the
# `strict` containers) any element or attribute the app's own code does not create.
AUDIT_JS = r"""(o) => {
    const base = o.shadow ? document.querySelector('#supportbot-widget').shadowRoot
        : document.body;
    const problems = (window.__xssHits || []).map((name) => 'canary called by ' + name);
    const show = (why, el) => problems.push(why + ': ' + el.outerHTML.slice(0, 200));
    // Browsers drop these characters when they read a URL's scheme.
    const scheme = (v) => v.replace(/[\u0000-\u0020\u007f-\u009f]/g, '');
    const DANGER = /^(javascript|data|vbscript):/i;
    const URL_ATTRS = new Set(['href', 'src', 'action', 'formaction', 'data', 'srcdoc',
        'xlink:href', 'background', 'poster', 'ping', 'codebase']);
    const FORBIDDEN = new Set(['SCRIPT', 'STYLE', 'IFRAME', 'FRAME', 'FRAMESET', 'OBJECT',
        'EMBED', 'APPLET', 'MATH', 'TEMPLATE', 'NOSCRIPT', 'META', 'BASE', 'LINK', 'VIDEO',
        'AUDIO', 'SOURCE', 'MARQUEE', 'PORTAL']);
    for (const el of base.querySelectorAll('*')) {
        const tag = el.tagName.toUpperCase();
        if (el.classList.contains('xss')) show('injected element', el);
        for (const a of el.attributes) {
            const name = a.name.toLowerCase();
            if (name.startsWith('on')) show('event handler ' + name, el);
            if (URL_ATTRS.has(name) && DANGER.test(scheme(a.value))) show('URL in ' + name, el);
        }
        if (tag === 'A' && el.hasAttribute('href')
            && !['http:', 'https:', 'mailto:'].includes(el.protocol)) {
            show('link to ' + el.protocol, el);
        }
        // The pages' own scripts: same-origin files, and json_script data.
        const ownScript = tag === 'SCRIPT' && (el.type === 'application/json'
            || (el.src && new URL(el.src).origin === location.origin && !el.text.trim()));
        if (FORBIDDEN.has(tag) && !ownScript) show('forbidden element', el);
    }
    const attrs = new RegExp(o.attrs || '^$');
    for (const selector of o.strict || []) {
        for (const container of base.querySelectorAll(selector)) {
            for (const el of container.querySelectorAll('*')) {
                if (!o.tags.includes(el.tagName.toUpperCase())) show('unexpected element', el);
                for (const a of el.attributes) {
                    if (!attrs.test(a.name)) show('unexpected attribute ' + a.name, el);
                }
            }
        }
    }
    return problems;
}"""
WIDGET_AUDIT = {
    "shadow": True,
    "strict": [".sb-messages"],
    "tags": ["DIV", "P", "BR", "STRONG", "EM", "CODE", "PRE", "UL", "OL", "LI", "HR", "A",
             "SPAN", "BUTTON"],
    "attrs": "^(class|data-(role|status|message-id|client-id)|href|target|rel|start|type)$",
}  # fmt: skip
CONSOLE_AUDIT = {
    "shadow": False,
    "strict": [".ac-timeline", ".ac-queue", ".ac-thread-head", ".ac-alert", ".ac-me"],
    "tags": ["ARTICLE", "ASIDE", "DIV", "SPAN", "TIME", "LI", "BUTTON", "H2", "DL", "DT", "DD",
             "STRONG"],
    "attrs": "^(class|data-[a-z-]+|datetime|title|type|role|hidden|disabled|aria-[a-z]+)$",
}  # fmt: skip
ADMIN_AUDIT = {"shadow": False}

BUBBLES_JS = """() => [...document.querySelector('#supportbot-widget').shadowRoot
    .querySelectorAll('.sb-messages .sb-message')].map((b) => ({
        id: b.getAttribute('data-message-id'), role: b.getAttribute('data-role'),
        status: b.getAttribute('data-status'), greeting: b.classList.contains('sb-greeting'),
        text: b.querySelector('.sb-text').innerText,
        sources: [...b.querySelectorAll('.sb-sources .sb-source')].map((e) => ({
            tag: e.tagName.toLowerCase(), text: e.innerText, href: e.getAttribute('href'),
            protocol: e.protocol || null, children: e.children.length,
        })),
    }))"""
# Whether each element's first words are drawn left to right: the x of their first
# character is left of their last one's.
LTR_JS = """(els) => els.map((el) => {
    const node = [...el.childNodes].find((n) => n.nodeType === 3 && n.data.trim().length > 1);
    const range = document.createRange();
    const x = (i) => { range.setStart(node, i); range.setEnd(node, i + 1);
                       return range.getBoundingClientRect().x; };
    const first = node.data.search(/\\S/), last = node.data.trimEnd().length - 1;
    return {text: node.data, ltr: x(first) < x(last)};
})"""
WIDGET_LINKS_JS = """() => [...document.querySelector('#supportbot-widget').shadowRoot
    .querySelectorAll('.sb-messages a')].map((a) => ({
        href: a.href, target: a.getAttribute('target'), rel: a.getAttribute('rel') || '',
    }))"""
CONSOLE_MESSAGES_JS = """() => [...document.querySelectorAll('.ac-message')].map((m) => ({
    id: m.getAttribute('data-message-id'), role: m.getAttribute('data-role'),
    status: m.getAttribute('data-status'), text: m.querySelector('.ac-text').innerText,
    who: m.querySelector('.ac-who').innerText,
}))"""


# --- Helpers -------------------------------------------------------------------------


class Watch:
    """What the test's pages did that they must not: canary calls, dialogs are in
    new_context.errors, navigations the test did not make, windows it did not open."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.opened: set[str] = {"about:blank"}
        self.navigations: list[str] = []
        self.pages: list[Any] = []
        self.popups: list[Any] = []

    def arm(self, context: Any) -> Any:
        context.expose_binding("__xssReport", lambda source, name: self.hits.append(name))
        context.add_init_script(CANARY_JS)
        context.on("page", self._on_page)
        return context

    def page(self, context: Any) -> Any:
        page = context.new_page()
        self.pages.append(page)
        page.on(
            "framenavigated",
            lambda frame: frame == page.main_frame and self.navigations.append(frame.url),
        )
        return page

    def _on_page(self, page: Any) -> None:
        # Pages made by self.page() are left out in check(); anything else is a popup.
        self.popups.append(page)

    def goto(self, page: Any, url: str) -> None:
        self.opened.add(_bare(url))
        page.goto(url)

    def check(self, errors: Any) -> None:
        assert self.hits == [], f"payloads ran: {sorted(set(self.hits))}"
        assert errors.dialogs == [], f"dialogs opened: {errors.dialogs}"
        unexpected = [url for url in self.navigations if _bare(url) not in self.opened]
        assert unexpected == [], f"pages navigated: {unexpected}"
        popups = [p.url for p in self.popups if p not in self.pages]
        assert popups == [], f"windows opened: {popups}"


def _bare(url: str) -> str:
    return url.split("#", 1)[0]


def _audit(page: Any, options: dict, where: str) -> None:
    problems = page.evaluate(AUDIT_JS, options)
    assert problems == [], f"{where}:\n" + "\n".join(problems)


def _batches() -> list[list[Payload]]:
    """The typed payloads split among visitors, each led by one of SUBJECTS."""
    leaders = [BY_NAME[name] for name in SUBJECTS]
    rest = [p for p in TYPED if p not in leaders]
    size = -(-len(rest) // len(leaders))
    return [[leader, *rest[i * size : (i + 1) * size]] for i, leader in enumerate(leaders)]


def _send(widget: Widget, text: str) -> None:
    # Enter, not a click on Send: markup that got in could cover the button, and the
    # audits should report it, not a click that timed out.
    widget.input.fill(text)
    widget.input.press("Enter")


def _chunks(text: str, size: int = 7) -> list[str]:
    # Odd-sized pieces split tags and link syntax across deltas.
    return [text[i : i + size] for i in range(0, len(text), size)]


def _hostile_site(origin: str) -> Site:
    # Moderation by the scripted server's API, which flags nothing: the offline
    # moderator's opinion of markup is not what this suite is about.
    return Site.objects.create(
        name=SITE_NAME,
        allowed_origins=[origin],
        system_prompt="You answer questions for a test shop.",
        temperature=0.2,
        max_tokens=300,
        moderation_mode=Site.ModerationMode.AFTER,
        moderation_provider=Site.ModerationProvider.API,
        widget_title=WIDGET_TITLE,
        widget_greeting=GREETING,
        handoff_topics=[],
    )


def _open_widget(
    watch: Watch, context: Any, stack: Any, host_pages: Any, site: Site, n: int
) -> Widget:
    tag = script_tag(stack.http_url + "/static/supportbot/widget.js", site.public_key)
    url = host_pages.add(
        f"/shop-{n}.html",
        f"<!doctype html><meta charset=utf-8><title>Shop {n}</title><p>A shop.</p>{tag}",
    )
    page = watch.page(context)
    watch.goto(page, url)
    widget = Widget(page)
    widget.open()
    return widget


def _conversation_id(widget: Widget, site: Site) -> str:
    handle = widget.page.wait_for_function(
        "(key) => { const c = JSON.parse(localStorage.getItem(key) || 'null'); return c && c.id; }",
        arg=f"supportbot:{site.public_key}:conversation",
    )
    return handle.json_value()


def _markdown_view(text: str, typed: bool) -> str:
    """What a Markdown view shows of a stored payload (or of any other text)."""
    for payload in PAYLOADS:
        if text == (payload.typed if typed else payload.text):
            return payload.shown_as_markdown
    return collapse(text)


def _check_widget(page: Any, conversation_id: str, where: str, everything: bool = True) -> None:
    """Every bubble shows its stored message as text (Markdown as rendered); with
    `everything`, every stored message has its bubble."""
    _audit(page, WIDGET_AUDIT, where)
    bubbles = page.evaluate(BUBBLES_JS)
    assert page.locator(".sb-title").inner_text() == WIDGET_TITLE, where
    greeting = [b for b in bubbles if b["greeting"]]
    assert [collapse(b["text"]) for b in greeting] == [GREETING_SHOWN], (where, greeting)
    stored = {str(m.pk): m for m in Message.objects.filter(conversation_id=conversation_id)}
    shown = [b for b in bubbles if not b["greeting"]]
    if everything:
        assert sorted(b["id"] for b in shown) == sorted(stored), f"{where}: bubbles differ"
    assert shown and all(b["id"] in stored for b in shown), f"{where}: unknown bubbles"
    links = page.evaluate(WIDGET_LINKS_JS)
    for link in links:
        assert link["target"] == "_blank", (where, link)
        assert {"noopener", "noreferrer"} <= set(link["rel"].split()), (where, link)
    safe = BY_NAME["md-safe-link"]
    rendered = [stored[b["id"]] for b in shown if stored[b["id"]].role in ("assistant", "agent")]
    if any(m.text in (safe.text, safe.typed) for m in rendered):
        # Links that are fine stay links: the audits are not passing by dropping all.
        assert "https://ok.example/help" in [link["href"] for link in links], where
    for bubble in shown:
        message = stored[bubble["id"]]
        assert bubble["status"] == message.status == "complete", (where, bubble, message.status)
        if message.role in ("visitor", "system"):
            assert bubble["text"] == message.text, (where, bubble, message.text)
        else:
            expected = _markdown_view(message.text, typed=message.role == "agent")
            assert collapse(bubble["text"]) == expected, (where, bubble, expected)


# --- The tests -------------------------------------------------------------------------


def test_the_payloads_cover_every_kind_and_none_hands_the_visitor_over() -> None:
    assert len(PAYLOADS) >= 30
    kinds = Counter(p.kind for p in PAYLOADS)
    assert set(kinds) >= {"html", "event", "url", "markdown", "mxss", "attribute", "css",
                          "encoding", "long", "template", "csv"}, kinds  # fmt: skip
    # Nothing a visitor sends may be taken for a request for a person or a repeated
    # question: either would hand the conversation over before the model answers.
    batches = _batches()
    assert sorted(p.name for batch in batches for p in batch) == sorted(p.name for p in TYPED)
    assert all(len(batch) <= BATCH for batch in batches)
    for batch in batches:
        texts = [p.typed for p in batch]
        for i, text in enumerate(texts):
            assert not handoff.visitor_asks_for_person(text), text
            assert not handoff.is_repeated_question(text, texts[:i]), text


def test_every_payload_is_inert_in_the_widget_the_console_and_the_admin(
    new_context, stack, llm, host_pages
) -> None:
    watch = Watch()
    site = _hostile_site(host_pages.origin)
    agent = _user("sam", staff=True, agent=True, first=AGENT_FIRST, last=AGENT_LAST)

    staff = watch.arm(new_context(bypass_csp=True))
    staff.add_cookies(
        [{"name": "sessionid", "value": _session_cookie(agent), "url": stack.http_url}]
    )
    console = watch.page(staff)
    watch.goto(console, stack.http_url + "/agent/")
    expect(console.locator(".ac-connection")).to_have_attribute("data-state", "online")

    # The model answers every visitor message with the next payload, streamed in pieces
    # (the NUL payload has a test of its own: the reply cannot be stored).
    for payload in TYPED:
        llm.enqueue(Script(tokens=_chunks(payload.text)))
    batches = [[p.typed for p in batch] for batch in _batches()]

    widgets: list[Widget] = []
    ids: list[str] = []
    for n, batch in enumerate(batches):
        widget = _open_widget(watch, watch.arm(new_context()), stack, host_pages, site, n)
        ids.append(_conversation_id(widget, site))
        if n == 0:
            # The console follows the first conversation live: events, deltas, done.
            console.locator(".ac-open-input").fill(ids[0])
            console.locator(".ac-open-input").press("Enter")
            expect(console.locator(f".ac-thread[data-conversation-id='{ids[0]}']")).to_be_visible()
        for text in batch:
            _send(widget, text)
        widgets.append(widget)

    _wait_for_answers(len(TYPED))
    answers = Message.objects.filter(role="assistant")
    assert Counter(a.status for a in answers) == {"complete": len(TYPED)}, [
        (a.status, a.error_code, a.text[:60]) for a in answers if a.status != "complete"
    ]
    assert Counter(a.text for a in answers) == Counter(p.text for p in TYPED)
    for n, (widget, batch) in enumerate(zip(widgets, batches, strict=True)):
        done = widget.page.locator(".sb-message[data-role=assistant][data-status=complete]")
        expect(done).to_have_count(len(batch))
        _check_widget(widget.page, ids[n], f"widget {n}")

    assistant_done = ".ac-message[data-role=assistant][data-status=complete]"
    expect(console.locator(assistant_done)).to_have_count(len(batches[0]))
    _check_console(console, ids[0], "console, live, before the handoff")

    # Every visitor asks for a person: a ticket each, whose subject is the first payload.
    for widget in widgets:
        widget.handoff.click()
    for cid in ids:
        expect(_queue_item(console, cid)).to_have_attribute("data-status", "waiting")
    expect(console.locator(".ac-thread")).to_have_attribute("data-status", "waiting")

    # The agent takes the first conversation over, answers with every payload and
    # writes every payload as an internal note.
    console.locator(".ac-take-over").click()
    composer = console.locator("textarea.ac-input")
    expect(composer).to_be_enabled()
    for payload in TYPED:
        composer.fill(payload.typed)
        composer.press("Enter")
    notes = console.locator("textarea.ac-note-input")
    for payload in TYPED:
        notes.fill(payload.typed)
        notes.press("Control+Enter")
    agent_messages = ".ac-message[data-role=agent][data-status=complete]"
    expect(console.locator(agent_messages)).to_have_count(len(TYPED))
    expect(console.locator(".ac-note")).to_have_count(len(TYPED))
    assert [m.text for m in Message.objects.filter(role="agent")] == [p.typed for p in TYPED]
    assert [n.text for n in InternalNote.objects.all()] == [p.typed for p in TYPED]
    expect(widgets[0].page.locator(".sb-message[data-role=agent]")).to_have_count(len(TYPED))

    for n, widget in enumerate(widgets):
        _check_widget(widget.page, ids[n], f"widget {n} after the handoff")
    _check_widget_reloaded(watch, widgets[0], ids[0])

    # The console: live (the first conversation), then from snapshots.
    _check_console(console, ids[0], "console, live")
    _check_queue(console, ids)
    console.reload()
    expect(console.locator(".ac-connection")).to_have_attribute("data-state", "online")
    expect(console.locator(agent_messages)).to_have_count(len(TYPED))
    _check_console(console, ids[0], "console, reloaded")
    _check_queue(console, ids)
    for n, cid in enumerate(ids[1:], start=1):
        console.locator(".ac-open-input").fill(cid)
        console.locator(".ac-open-input").press("Enter")
        expect(console.locator(f".ac-thread[data-conversation-id='{cid}']")).to_be_visible()
        _check_console(console, cid, f"console, conversation {n}")

    # The admin: transcripts, tickets, lists and a search, then both exports.
    admin = watch.page(staff)
    _check_admin_tickets(watch, admin, stack, ids[0])
    for cid in ids:
        _check_admin_conversation(watch, admin, stack, cid)
    _check_admin_search(watch, admin, stack)
    _check_exports(watch, admin, stack, ids)

    console.wait_for_timeout(300)  # handlers of anything that got in would have run
    watch.check(new_context.errors)


def _wait_for_answers(count: int) -> None:
    """Until `count` replies have ended; if they do not, say which questions wait."""
    ended = Message.objects.filter(role="assistant").exclude(status="streaming")
    try:
        _wait_for(lambda: ended.count() >= count, "every payload answered", timeout=60)
    except AssertionError:
        waiting = [
            (str(m.conversation_id)[:8], m.seq, m.moderation, m.handoff_reason, m.text[:40])
            for m in Message.objects.filter(role="visitor", reply__isnull=True)
        ]
        raise AssertionError(
            f"{ended.count()} of {count} replies ended; unanswered: {waiting}"
        ) from None


def _check_widget_reloaded(watch: Watch, widget: Widget, conversation_id: str) -> None:
    """The same conversation drawn from storage alone, then from storage and replay."""
    page = widget.page
    offline = watch.page(page.context)
    offline.route_web_socket(re.compile(r"/ws/v1/"), lambda ws: None)
    watch.goto(offline, page.url)
    stored = Widget(offline)
    stored.wait_ready()
    if not stored.is_open():
        stored.open()
    # The widget keeps the last 40 messages.
    expect(offline.locator(MESSAGE)).to_have_count(40)
    _check_widget(offline, conversation_id, "widget from storage", everything=False)
    offline.close()

    page.reload()
    widget.wait_ready()
    if not widget.is_open():
        widget.open()
    expect(widget.panel).to_have_attribute("data-connection", "online")
    total = Message.objects.filter(conversation_id=conversation_id).count()
    expect(page.locator(MESSAGE)).to_have_count(total)
    _check_widget(page, conversation_id, "widget reloaded")


def _check_console(console: Any, conversation_id: str, where: str) -> None:
    _audit(console, CONSOLE_AUDIT, where)
    conversation = Conversation.objects.select_related("site").get(pk=conversation_id)
    stored = {str(m.pk): m for m in conversation.messages.select_related("author")}
    shown = console.evaluate(CONSOLE_MESSAGES_JS)
    assert sorted(m["id"] for m in shown) == sorted(stored), f"{where}: messages differ"
    for message in shown:
        row = stored[message["id"]]
        # The console shows every text as written, whitespace and all.
        assert message["text"] == row.text, (where, message, row.text)
        if row.role == "agent":
            assert message["who"] == f"{AGENT_FIRST} {AGENT_LAST} (agent)", (where, message)
    notes = console.locator(".ac-note .ac-note-text").evaluate_all(
        "(ns) => ns.map((n) => n.innerText)"
    )
    assert notes == [n.text for n in InternalNote.objects.filter(conversation_id=conversation_id)]
    assert console.locator(".ac-thread-site").inner_text() == SITE_NAME
    assert console.locator(".ac-me strong").inner_text() == f"{AGENT_FIRST} {AGENT_LAST}"
    ticket = conversation.tickets.first()
    if ticket is not None:
        facts = console.locator(".ac-thread-facts").inner_text()
        assert ticket.subject in facts, (where, facts, ticket.subject)


def _queue_item(console: Any, conversation_id: str) -> Any:
    return console.locator(f".ac-queue-item[data-conversation-id='{conversation_id}']")


def _check_queue(console: Any, ids: list[str]) -> None:
    # Only this test's conversations: the pub/sub channel layer is shared by every
    # process on the Redis server, whatever its database number.
    mine = ", ".join(f".ac-queue-item[data-conversation-id='{cid}']" for cid in ids)
    items = console.locator(mine).evaluate_all(
        """(items) => items.map((i) => ({
            site: i.querySelector('.ac-qi-site').innerText,
            subject: i.querySelector('.ac-qi-subject').innerText,
            agent: i.querySelector('.ac-qi-agent').innerText,
        }))"""
    )
    subjects = [t.subject for t in Ticket.objects.all()]
    assert sorted(i["subject"] for i in items) == sorted(subjects), items
    assert {i["site"] for i in items} == {SITE_NAME}, items
    assert f"Agent: {AGENT_FIRST} {AGENT_LAST}" in [i["agent"] for i in items], items
    _audit(console, CONSOLE_AUDIT, "console queue")


def _texts(page: Any, selector: str) -> list[str]:
    return [
        collapse(t)
        for t in page.locator(selector).evaluate_all("(es) => es.map((e) => e.innerText)")
    ]


def _check_admin_conversation(watch: Watch, page: Any, stack: Any, conversation_id: str) -> None:
    url = f"{stack.http_url}/admin/conversations/conversation/{conversation_id}/change/"
    watch.goto(page, url)
    _audit(page, ADMIN_AUDIT, url)
    messages = Message.objects.filter(conversation_id=conversation_id).order_by("seq")
    assert _texts(page, ".sb-transcript li.sb-message .sb-text") == [
        collapse(m.text) for m in messages
    ]
    notes = InternalNote.objects.filter(conversation_id=conversation_id)
    assert _texts(page, "[aria-labelledby=sb-notes-heading] li .sb-text") == [
        collapse(n.text) for n in notes
    ]
    ticket = Ticket.objects.get(conversation_id=conversation_id)
    assert _texts(page, "[aria-labelledby=sb-tickets-heading] li a") == [collapse(ticket.subject)]
    # A right-to-left override in the subject does not reverse the page's own words
    # after it ("Open", "priority Normal").
    details = page.locator("[aria-labelledby=sb-tickets-heading] .sb-details > span")
    for shown in details.evaluate_all(LTR_JS):
        assert shown["ltr"], f"{shown['text']!r} is drawn right to left after {ticket.subject!r}"


def _check_admin_tickets(watch: Watch, page: Any, stack: Any, conversation_id: str) -> None:
    url = f"{stack.http_url}/admin/conversations/ticket/"
    watch.goto(page, url)
    _audit(page, ADMIN_AUDIT, url)
    assert sorted(_texts(page, "#result_list .field-subject")) == sorted(
        collapse(t.subject) for t in Ticket.objects.all()
    )
    ticket = Ticket.objects.get(conversation_id=conversation_id)
    url = f"{stack.http_url}/admin/conversations/ticket/{ticket.pk}/change/"
    watch.goto(page, url)
    _audit(page, ADMIN_AUDIT, url)
    # An internal note written in the admin: a payload that closes the textarea it is
    # typed into, shown again in that form's read-only rows after saving.
    note = BY_NAME["mxss-textarea"].typed + " " + BY_NAME["attr-double"].typed
    page.locator(".inline-related textarea[name$='-text']:not([name*=__prefix__])").fill(note)
    with page.expect_navigation():
        page.locator("input[name=_continue]").click()
    _audit(page, ADMIN_AUDIT, url + " after saving a note")
    assert InternalNote.objects.filter(ticket=ticket).last().text == note
    assert _texts(page, ".field-subject .readonly") == [collapse(ticket.subject)]
    notes = [collapse(n.text) for n in InternalNote.objects.filter(ticket=ticket)]
    assert _texts(page, ".inline-related .field-text p") == notes
    # The change is logged with the ticket's subject: its history and the admin's
    # recent actions show it.
    for url in (f"{stack.http_url}/admin/conversations/ticket/{ticket.pk}/history/",
                f"{stack.http_url}/admin/"):  # fmt: skip
        watch.goto(page, url)
        _audit(page, ADMIN_AUDIT, url)
        assert collapse(ticket.subject) in collapse(page.locator("#content").inner_text()), url


def _check_admin_search(watch: Watch, page: Any, stack: Any) -> None:
    # The search term is reflected in the page (the box, the result count).
    for payload in (BY_NAME["attr-double"], BY_NAME["mxss-textarea"], BY_NAME["script-close"]):
        url = f"{stack.http_url}/admin/conversations/conversation/?q={quote(payload.typed)}"
        watch.goto(page, url)
        _audit(page, ADMIN_AUDIT, url)
        assert page.locator("#searchbar").input_value() == payload.typed
        found = Message.objects.filter(text__contains=payload.typed).values("conversation_id")
        for cid in {str(m["conversation_id"]) for m in found}:
            expect(page.locator(f"#result_list a[href*='{cid}']")).to_have_count(1)


def _check_exports(watch: Watch, page: Any, stack: Any, ids: list[str]) -> None:
    """Both exports downloaded (headers, content), and the JSON one opened as a page."""
    changelist = f"{stack.http_url}/admin/conversations/conversation/"
    captured: dict[str, Any] = {}
    inline = {"on": False}

    def capture(route: Any) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        response = route.fetch()
        captured["headers"], captured["body"] = response.headers, response.body()
        headers = dict(response.headers)
        if inline["on"]:
            # As if the browser ignored the attachment: it shows the file as a page.
            headers.pop("content-disposition", None)
        route.fulfill(response=response, headers=headers)

    page.route(lambda url: url.startswith(changelist), capture)

    def export(action: str) -> None:
        watch.goto(page, changelist)
        page.locator("#action-toggle").check()
        page.locator("select[name=action]").select_option(action)
        go = page.locator("button[name=index]")
        if inline["on"]:
            with page.expect_navigation():
                go.click()
        else:
            go.click()

    with page.expect_download() as download:
        export("export_json")
    assert download.value.suggested_filename.endswith(".json")
    headers = captured["headers"]
    assert headers["content-type"] == "application/json", headers
    assert headers["x-content-type-options"] == "nosniff", headers
    assert headers["content-disposition"].startswith("attachment;"), headers
    document = json.loads(captured["body"])
    exported = {c["id"]: c for c in document["conversations"]}
    assert sorted(exported) == sorted(ids)
    for cid in ids:
        texts = [m["text"] for m in exported[cid]["messages"]]
        assert texts == [m.text for m in Message.objects.filter(conversation_id=cid)]
    assert {c["site"]["name"] for c in exported.values()} == {SITE_NAME}
    _audit(page, ADMIN_AUDIT, "the changelist after the JSON download")

    inline["on"] = True
    export("export_json")
    assert page.evaluate("() => document.contentType") == "application/json"
    _audit(page, ADMIN_AUDIT, "the JSON export shown as a page")
    assert "__xss('img-onerror')" in page.locator("body").inner_text()
    inline["on"] = False

    with page.expect_download() as download:
        export("export_csv")
    assert download.value.suggested_filename.endswith(".csv")
    headers = captured["headers"]
    assert headers["content-type"].startswith("text/csv"), headers
    assert headers["x-content-type-options"] == "nosniff", headers
    rows = list(csv.DictReader(io.StringIO(captured["body"].decode("utf-8-sig"), newline="")))
    stored = {
        (str(m.conversation_id), str(m.seq)): m
        for m in Message.objects.filter(conversation_id__in=ids).select_related("author")
    }
    assert len(rows) == len(stored)
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(FORMULA_PREFIXES), (column, cell)
        message = stored[(row["conversation_id"], row["seq"])]
        assert row["text"] == _neutralised(message.text), (row["text"], message.text)
        if message.author_id:
            assert row["author"] == _neutralised(f"{AGENT_FIRST} {AGENT_LAST}"), row["author"]
    formulas = [p for p in TYPED if p.kind == "csv"]
    texts = {row["text"] for row in rows}
    for payload in formulas:
        # The model's copy keeps its leading tab or carriage return; the typed one not.
        assert "'" + payload.text in texts, payload.name
        assert "'" + payload.typed in texts, payload.name


def _neutralised(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


# --- Article titles and URLs under answers -----------------------------------------------

# Three words of their own for each group of four articles (an answer cites at most four):
# a question made of them finds exactly its group.
TOPICS = [
    "lantern brightness glow", "harbour anchor dock", "glacier frost thaw", "meadow clover bloom",
    "canyon echo ridge", "orchard apple harvest", "violin bow rosin", "compass needle north",
    "falcon feather nest", "kettle steam boil", "pebble shore tide", "quilt stitch wool",
    "saddle stirrup rein", "tulip bulb petal", "walnut shell husk", "beacon lighthouse keeper",
    "cellar barrel cork", "ferry ticket pier", "garden hose sprinkler", "puzzle piece corner",
]  # fmt: skip
SOURCES_PER_ANSWER = 4
QUESTIONS_PER_VISITOR = 10


def _cited(title: str) -> str:
    """A source's title as the widget shows it: whitespace collapsed, cut at 120."""
    shown = collapse(title)
    return shown if len(shown) <= 120 else shown[:119].rstrip() + "…"


def test_article_titles_and_urls_are_inert_under_answers(
    new_context, stack, llm, host_pages
) -> None:
    watch = Watch()
    site = _hostile_site(host_pages.origin)
    # Titles hold 300 characters at most, and PostgreSQL no NUL.
    titles = [p.text for p in PAYLOADS if p.sendable and len(p.text) <= 300]
    groups = [titles[i : i + SOURCES_PER_ANSWER] for i in range(0, len(titles), SOURCES_PER_ANSWER)]
    assert len(groups) <= len(TOPICS)
    articles = {}
    for g, (group, topic) in enumerate(zip(groups, TOPICS, strict=False)):
        a, b, c = topic.split()
        body = f"The {a} {b} {c} guide. Every {a} comes with a {b}, and its {c} lasts for years."
        for i, title in enumerate(group):
            url = URL_PAYLOADS[(g * SOURCES_PER_ANSWER + i) % len(URL_PAYLOADS)]
            article, _ = article_upsert(
                site=site, source=f"{g}-{i}", title=title, body=body, url=url.url
            )
            articles[article.pk] = url
    questions = [f"{topic}?" for topic in TOPICS[: len(groups)]]

    widgets, ids = [], []
    for n in range(0, len(questions), QUESTIONS_PER_VISITOR):
        widget = _open_widget(watch, watch.arm(new_context()), stack, host_pages, site, n)
        batch = questions[n : n + QUESTIONS_PER_VISITOR]
        for question in batch:
            _send(widget, question)
        done = widget.page.locator(".sb-message[data-role=assistant][data-status=complete]")
        expect(done).to_have_count(len(batch))
        widgets.append(widget)
        ids.append(_conversation_id(widget, site))

    answers = list(Message.objects.filter(role="assistant"))
    cited = [s["id"] for answer in answers for s in answer.sources]
    assert sorted(cited) == sorted(articles), "retrieval did not cite every article once"
    for n, widget in enumerate(widgets):
        _check_sources(widget.page, ids[n], articles, f"widget {n}")
    # Again from storage and the server's replay.
    widgets[0].page.reload()
    widgets[0].wait_ready()
    if not widgets[0].is_open():
        widgets[0].open()
    expect(widgets[0].panel).to_have_attribute("data-connection", "online")
    _check_sources(widgets[0].page, ids[0], articles, "widget 0 reloaded")

    # Administrators see the same titles and URLs in the article admin.
    root = _user("root", staff=True, agent=False)
    root.is_superuser = True
    root.save(update_fields=["is_superuser"])
    admin_context = watch.arm(new_context(bypass_csp=True))
    admin_context.add_cookies(
        [{"name": "sessionid", "value": _session_cookie(root), "url": stack.http_url}]
    )
    admin = watch.page(admin_context)
    url = f"{stack.http_url}/admin/conversations/article/?all="
    watch.goto(admin, url)
    _audit(admin, ADMIN_AUDIT, url)
    shown = sorted(_texts(admin, "#result_list .field-title"))
    assert shown == sorted(collapse(t) for t in titles)
    for pk in list(articles)[:: SOURCES_PER_ANSWER + 1]:
        url = f"{stack.http_url}/admin/conversations/article/{pk}/change/"
        watch.goto(admin, url)
        _audit(admin, ADMIN_AUDIT, url)
    widgets[0].page.wait_for_timeout(300)  # handlers of anything that got in would have run
    watch.check(new_context.errors)


def _check_sources(page: Any, conversation_id: str, urls: dict, where: str) -> None:
    _check_widget(page, conversation_id, where)
    bubbles = {b["id"]: b for b in page.evaluate(BUBBLES_JS)}
    answers = Message.objects.filter(conversation_id=conversation_id, role="assistant")
    for answer in answers:
        entries = bubbles[str(answer.pk)]["sources"]
        assert [e["text"] for e in entries] == [_cited(s["title"]) for s in answer.sources], (
            where,
            entries,
        )
        for entry, source in zip(entries, answer.sources, strict=True):
            assert entry["children"] == 0, (where, entry)  # the title is text only
            if urls[source["id"]].link:
                assert entry["tag"] == "a" and entry["protocol"] == "https:", (where, entry)
                # The parsed URL: quotes, brackets and spaces percent-encoded.
                assert entry["href"].startswith("https://ok.example/"), (where, entry)
                assert not re.search(r'[\s"<>]', entry["href"]), (where, entry)
            else:
                assert entry["tag"] == "span" and entry["href"] is None, (where, entry)


def test_a_model_reply_with_a_nul_character_ends_and_is_inert(
    new_context, stack, llm, host_pages
) -> None:
    watch = Watch()
    site = _hostile_site(host_pages.origin)
    llm.enqueue(Script(tokens=_chunks(BY_NAME["nul-byte"].text)))
    widget = _open_widget(watch, watch.arm(new_context()), stack, host_pages, site, 0)
    _send(widget, "What does a broken answer look like?")
    reply = widget.bubbles("assistant").first
    expect(reply).to_have_attribute("data-status", "complete", timeout=15_000)
    # Stored as streamed, without the NUL PostgreSQL refuses.
    stored = Message.objects.filter(conversation__site=site, role="assistant").get()
    assert stored.text == BY_NAME["nul-byte"].text.replace("\x00", "")
    _audit(widget.page, WIDGET_AUDIT, "a reply with NUL")
    watch.check(new_context.errors)
