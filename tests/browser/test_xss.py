"""Markup in a visitor's message or in the model's reply is shown as text, never run."""

from __future__ import annotations

from tests.browser.widget import Widget
from tests.scripted_llm import Script

# Raw HTML: must be visible verbatim, as text.
HTML_PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    '<svg onload="window.__xss=1">',
    '<iframe srcdoc="<script>parent.__xss=1</script>">',
    "<script>window.__xss=1</script>",
    '<a href="javascript:window.__xss=1">raw link</a>',
    '<details open ontoggle="window.__xss=1">d</details>',
    "<style>*{display:none!important}</style>",
    '<b onmouseover="window.__xss=1">bold</b>',
]
# Markdown and autolink tricks: may render as text or as a safe link, never run.
MARKDOWN_PAYLOADS = [
    "[click](javascript:window.__xss=1)",
    "[x](JaVaScRiPt:window.__xss=1)",
    "[y](data:text/html,<script>alert(1)</script>)",
    "[z](<javascript:window.__xss=1>)",
    "[e](&#106;avascript:window.__xss=1)",
    "[e2](&#x6A;avascript&colon;window.__xss=1)",
    "[sp]( javascript:window.__xss=1 )",
    "[tab](\tjavascript:window.__xss=1)",
    "[nl](java\nscript:window.__xss=1)",
    "[v](vbscript:msgbox(1))",
    "[f](file:///etc/passwd)",
    "[rel](/admin/)",
    "[proto](//evil.example/x)",
    '[q](https://ok.example/" onmouseover="window.__xss=1" x=")',
    '[t](https://ok.example/t "title\\" onmouseover=\\"window.__xss=1")',
    '![pic](x" onerror="window.__xss=1)',
    "![pic2](https://ok.example/p.png)",
    "<javascript:window.__xss=1>",
    "<https://ok.example/auto>",
    "<mailto:help@example.com>",
    "https://ok.example/bare</a><img src=x onerror=window.__xss=1>",
    'www.ok.example/"onmouseover="window.__xss=1"',
    "[nested [a](javascript:window.__xss=1)](https://ok.example/n)",
    "[ok](https://ok.example/path?q=1&r=2)",
    "[mail](mailto:help@example.com)",
    '`<img src=x onerror="window.__xss=1">`',
    '**<img src=x onerror="window.__xss=1">**',
]
PAYLOAD = "Test:\n\n" + "\n\n".join(HTML_PAYLOADS + MARKDOWN_PAYLOADS) + "\n\nEnd."

FORBIDDEN = ", ".join(
    ["img", "svg", "iframe", "script", "style", "object", "embed", "frame", "frameset", "details",
     "form", "input", "video", "audio", "link", "meta", "base", "math"]
)  # fmt: skip

AUDIT_JS = """(forbidden) => {
    const root = document.querySelector('#supportbot-widget').shadowRoot;
    const log = root.querySelector('.sb-messages');
    const bad = [...log.querySelectorAll(forbidden)].map((e) => e.outerHTML.slice(0, 120));
    const handlers = [...log.querySelectorAll('*')].flatMap((e) =>
        [...e.attributes].filter((a) => /^on/i.test(a.name) || a.name === 'srcdoc')
            .map((a) => e.tagName + ' ' + a.name));
    const links = [...log.querySelectorAll('a')].map((a) => ({
        href: a.getAttribute('href'), protocol: a.protocol, target: a.getAttribute('target'),
        rel: (a.getAttribute('rel') || '').split(/\\s+/), text: a.textContent,
    }));
    return {bad, handlers, links};
}"""


def _chunks(text: str, size: int) -> list[str]:
    # Odd-sized pieces split tags and link syntax across deltas.
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_markup_from_visitor_and_model_is_text_and_links_are_safe(
    new_context, stack, demo_site, llm
):
    llm.enqueue(Script(tokens=_chunks(PAYLOAD, 7), token_interval=0.004))
    context = new_context()
    page = context.new_page()
    popups = []
    context.on("page", lambda popup: popups.append(popup))
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.open()
    widget.send(PAYLOAD)
    reply = widget.wait_reply_complete()
    visitor = widget.last("visitor")
    page.wait_for_timeout(500)  # onerror/onload handlers, if any got in, would have run

    for bubble in (visitor, reply):
        text = widget.text_of(bubble)
        for payload in HTML_PAYLOADS:
            assert payload in text, f"{payload!r} is not shown as text in: {text!r}"

    audit = page.evaluate(AUDIT_JS, FORBIDDEN)
    assert audit["bad"] == [], audit["bad"]
    assert audit["handlers"] == [], audit["handlers"]
    safe = [link for link in audit["links"] if link["protocol"] in ("http:", "https:")]
    for link in audit["links"]:
        assert link["protocol"] in ("http:", "https:", "mailto:"), link
        assert link["href"].lower().startswith(("http://", "https://", "mailto:")), link
        assert link["target"] == "_blank", link
        assert "noopener" in link["rel"] and "noreferrer" in link["rel"], link
    assert any(link["href"] == "https://ok.example/path?q=1&r=2" for link in safe), audit["links"]
    assert any(link["href"] == "mailto:help@example.com" for link in audit["links"]), audit

    # Hover and click every link (mailto would hand off to the system; skip those).
    links = page.locator(".sb-messages a")
    for i in range(links.count()):
        link = links.nth(i)
        link.hover()
        if link.evaluate("(a) => a.protocol") == "mailto:":
            continue
        link.click()
    for _ in range(100):
        if len(popups) >= len(safe):
            break
        page.wait_for_timeout(50)
    assert len(popups) == len(safe), [p.url for p in popups]
    for popup in popups:
        popup.wait_for_load_state()
        assert popup.evaluate("() => window.opener") is None, popup.url
        assert popup.url.startswith(("http://", "https://")), popup.url
    page.bring_to_front()
    page.wait_for_timeout(300)

    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert new_context.errors.dialogs == []
