"""On a phone-sized screen the launcher is on screen and the open panel fills it."""

from __future__ import annotations

import pytest

from tests.browser.widget import Widget, expect, script_tag
from tests.scripted_llm import Script

PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
RESPONSIVE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Phone shop</title></head>
<body><h1>Phone shop</h1><p>A page that fits a phone's width.</p>{script}</body></html>"""


def _inside(box: dict | None, width: int, height: int) -> bool:
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= width + 0.5
        and box["y"] + box["height"] <= height + 0.5
    )


@pytest.mark.parametrize("where", ["responsive page", "demo page"])
def test_a_phone_visitor_can_tap_the_launcher_and_chat(
    where, new_context, stack, demo_site, host_pages, llm
):
    llm.enqueue(Script(tokens=["We", " ship", " to", " Norway", "."], token_interval=0.02))
    if where == "demo page":
        url = stack.http_url + "/"
    else:
        demo_site.allowed_origins = [*demo_site.allowed_origins, host_pages.origin]
        demo_site.save(update_fields=["allowed_origins"])
        tag = script_tag(stack.http_url + "/static/supportbot/widget.js", demo_site.public_key)
        url = host_pages.add("/phone.html", RESPONSIVE_PAGE.format(script=tag))
    page = new_context(**PHONE).new_page()
    page.goto(url)
    widget = Widget(page)
    widget.wait_ready()

    layout = page.evaluate("() => [window.innerWidth, window.innerHeight]")
    assert layout == [390, 844], (
        f"the page widened the layout viewport to {layout}: position:fixed elements "
        f"(the launcher, the panel) are laid out against it, off the phone's screen"
    )
    assert _inside(widget.launcher.bounding_box(), 390, 844), widget.launcher.bounding_box()
    widget.launcher.tap()
    expect(widget.panel).to_be_visible()
    widget.settle()
    assert widget.panel.bounding_box() == {"x": 0, "y": 0, "width": 390, "height": 844}
    widget.input.fill("Do you ship to Norway?")
    widget.send_button.tap()
    bubble = widget.wait_reply_complete()
    expect(bubble.locator(".sb-text")).to_have_text("We ship to Norway.")
    widget.settle()
    for part in (widget.input, widget.send_button, widget.close_button, bubble):
        assert _inside(part.bounding_box(), 390, 844), part
    widget.close_button.tap()
    expect(widget.panel).to_be_hidden()
    assert _inside(widget.launcher.bounding_box(), 390, 844)
