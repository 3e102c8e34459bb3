"""Screenshots of the open widget with a short conversation, desktop and phone.

Always taken (so the flow is tested); written to docs/ only when
SUPPORTBOT_SCREENSHOTS=1 (see ``python -m tests.browser.screenshots``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser.widget import Widget, expect
from tests.scripted_llm import Script

DOCS = Path(__file__).resolve().parents[2] / "docs"
QUESTION = "Hi! Where is my order #1042?"
ANSWER = [
    "Thanks", " for", " asking!", " Order", " **#1042**", " left", " our", " warehouse",
    " yesterday", " and", " should", " arrive", " by", " Friday.", " You", " can", " follow",
    " it", " on", " the", " [tracking page](https://example.com/track/1042).",
]  # fmt: skip
DEVICES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return DOCS if os.environ.get("SUPPORTBOT_SCREENSHOTS") == "1" else tmp_path


@pytest.mark.parametrize("device", list(DEVICES))
def test_screenshot_of_a_short_conversation(device, new_context, stack, demo_site, llm, out_dir):
    llm.enqueue(Script(tokens=ANSWER, token_interval=0.01))
    page = new_context(**DEVICES[device]).new_page()
    page.goto(stack.http_url + "/")
    widget = Widget(page)
    widget.wait_ready()
    # Through the page API: whether the launcher can be tapped is test_phone's business.
    page.evaluate("() => window.SupportBot.open()")
    expect(widget.panel).to_be_visible()
    widget.input.fill(QUESTION)
    widget.input.press("Enter")
    widget.wait_reply_complete()
    expect(widget.panel).to_have_attribute("data-connection", "online")
    widget.input.blur()
    widget.settle()

    path = out_dir / f"widget-{device}.png"
    page.screenshot(path=str(path), animations="disabled", caret="hide")
    assert path.stat().st_size > 10_000
