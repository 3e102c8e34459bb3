"""The widget as a test sees it: its DOM contract, wrapped in Playwright locators.

The widget lives in an open shadow root on ``<div id="supportbot-widget">``;
Playwright's CSS selectors pierce open shadow roots, so plain class selectors work.
"""

from __future__ import annotations

import re
from typing import Any

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails in CI) before any use
    expect = None  # type: ignore[assignment]

HOST = "#supportbot-widget"
# Bubbles of stored messages: the greeting is not one of them.
MESSAGE = ".sb-messages .sb-message:not(.sb-greeting)"


def script_tag(widget_url: str, site_key: str) -> str:
    return f'<script src="{widget_url}" data-site-key="{site_key}" async></script>'


class Widget:
    def __init__(self, page: Any):
        self.page = page
        self.host = page.locator(HOST)
        self.launcher = page.locator("button.sb-launcher")
        self.panel = page.locator("div.sb-panel[role=dialog]")
        self.close_button = page.locator("button.sb-close")
        self.log = page.locator("div.sb-messages[role=log]")
        self.greeting = page.locator(".sb-messages .sb-message.sb-greeting")
        self.input = page.locator("textarea.sb-input")
        self.send_button = page.locator("button.sb-send")
        self.handoff = page.locator("button.sb-handoff")
        self.notice = page.locator(".sb-notice")
        self.error = page.locator(".sb-error[role=alert]")
        self.typing = page.locator(".sb-typing")

    # -- state ---------------------------------------------------------------------

    def wait_ready(self) -> None:
        self.page.wait_for_function(
            "() => window.SupportBot && window.SupportBot.ready === true", timeout=20_000
        )

    def is_open(self) -> bool:
        return self.page.evaluate("() => window.SupportBot.isOpen()")

    def bubbles(self, role: str | None = None) -> Any:
        selector = MESSAGE if role is None else f"{MESSAGE}[data-role={role}]"
        return self.page.locator(selector)

    def last(self, role: str) -> Any:
        return self.bubbles(role).last

    def text_of(self, bubble: Any) -> str:
        return bubble.locator(".sb-text").text_content()

    def snapshot(self) -> list[dict[str, str | None]]:
        """Every stored-message bubble: id, client id, role, status and text."""
        return self.page.evaluate(
            """(selector) => [...document.querySelector('#supportbot-widget')
                .shadowRoot.querySelectorAll(selector)].map((b) => ({
                id: b.getAttribute('data-message-id'),
                client_id: b.getAttribute('data-client-id'),
                role: b.getAttribute('data-role'),
                status: b.getAttribute('data-status'),
                text: b.querySelector('.sb-text') ? b.querySelector('.sb-text').textContent : null,
            }))""",
            MESSAGE,
        )

    def shadow_active(self) -> str | None:
        """A description of the focused element inside the shadow root (tag.classes)."""
        return self.page.evaluate(
            """() => {
                const host = document.querySelector('#supportbot-widget');
                if (!host || document.activeElement !== host) return null;
                const el = host.shadowRoot.activeElement;
                return el ? el.tagName.toLowerCase() + '.' + [...el.classList].join('.') : null;
            }"""
        )

    def settle(self) -> None:
        """Wait for the widget's finite animations (panel opening, bubbles) to end."""
        self.page.evaluate(
            """() => Promise.all(document.querySelector('#supportbot-widget').shadowRoot
                .getAnimations()
                .filter((a) => a.effect && a.effect.getComputedTiming().endTime !== Infinity)
                .map((a) => a.finished.catch(() => null)))"""
        )

    # -- actions -------------------------------------------------------------------

    def open(self) -> None:
        """Open the panel with the launcher and wait until it can be typed into."""
        self.wait_ready()
        self.launcher.click()
        expect(self.panel).to_be_visible()
        expect(self.input).to_be_editable()

    def send(self, text: str) -> None:
        self.input.fill(text)
        self.send_button.click()

    def wait_reply_complete(self, count: int = 1, timeout: float = 20_000) -> Any:
        """The assistant bubble number ``count`` (1-based), once it is complete."""
        bubble = self.bubbles("assistant").nth(count - 1)
        expect(bubble).to_have_attribute("data-status", "complete", timeout=timeout)
        return bubble

    def record_assistant_text(self) -> None:
        """Record, in the page, every change of the newest assistant bubble."""
        self.page.evaluate(
            """(selector) => {
                const root = document.querySelector('#supportbot-widget').shadowRoot;
                window.__sbSamples = [];
                const record = () => {
                    const all = root.querySelectorAll(selector + '[data-role=assistant]');
                    const bubble = all[all.length - 1];
                    if (!bubble) return;
                    const t = bubble.querySelector('.sb-text');
                    const sample = {
                        id: bubble.getAttribute('data-message-id'),
                        status: bubble.getAttribute('data-status'),
                        text: t ? t.textContent : '',
                    };
                    const prev = window.__sbSamples[window.__sbSamples.length - 1];
                    if (!prev || prev.text !== sample.text || prev.status !== sample.status) {
                        window.__sbSamples.push(sample);
                    }
                };
                new MutationObserver(record).observe(root, {
                    subtree: true, childList: true, characterData: true, attributes: true,
                });
            }""",
            MESSAGE,
        )

    def recorded_assistant_text(self) -> list[dict[str, str]]:
        return self.page.evaluate("() => window.__sbSamples")


PLAIN_SENTENCE = re.compile(r"^[A-Z0-9\"'“].*[.!?…)]$", re.S)
