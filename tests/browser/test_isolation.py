"""A customer's page with hostile CSS does not change how the widget looks."""

from __future__ import annotations

import base64

from tests.browser.widget import Widget, expect, script_tag
from tests.scripted_llm import Script

HOSTILE_CSS = """
*, *::before, *::after { all: unset !important; }
html { font-size: 40px !important; }
body {
  font: italic 700 30px/3 "Comic Sans MS", cursive !important; color: #0f0 !important;
  letter-spacing: 4px !important; word-spacing: 12px !important;
  text-transform: uppercase !important; text-align: right !important;
  text-shadow: 2px 2px red !important; cursor: crosshair !important;
}
div {
  display: block !important; box-sizing: content-box !important; padding: 13px !important;
  margin: 7px !important; border: 3px dashed magenta !important; background: yellow !important;
  line-height: 4 !important; font-size: 33px !important; color: blue !important;
  visibility: visible !important; white-space: pre !important;
}
button {
  background: red !important; color: yellow !important; border: 5px solid lime !important;
  font-size: 40px !important; padding: 20px !important; width: 300px !important;
  height: 90px !important; border-radius: 0 !important; box-shadow: 0 0 30px blue !important;
}
textarea, input {
  font-size: 40px !important; background: black !important; color: white !important;
  height: 300px !important; width: 10px !important;
}
a { color: orange !important; text-decoration: line-through !important; }
p, span { font-size: 50px !important; display: block !important; }
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>{style}</head>
<body><h1>{title}</h1><p>Some shop content.</p>{script}</body></html>"""

PROPERTIES = [
    "font-size", "font-family", "font-weight", "font-style", "line-height", "color",
    "background-color", "letter-spacing", "word-spacing", "text-transform", "text-align",
    "text-shadow", "padding-top", "padding-left", "margin-top", "border-top-width",
    "border-top-style", "border-top-color", "border-top-left-radius", "box-shadow",
    "box-sizing", "display", "position", "width", "height", "opacity", "visibility",
    "white-space", "text-decoration-line", "cursor", "z-index",
]  # fmt: skip
ELEMENTS = {
    "launcher": "button.sb-launcher",
    "panel": "div.sb-panel",
    "close": "button.sb-close",
    "log": "div.sb-messages",
    "greeting": ".sb-message.sb-greeting",
    "greeting text": ".sb-message.sb-greeting .sb-text",
    "visitor": ".sb-message[data-role=visitor]:not(.sb-greeting)",
    "visitor text": ".sb-message[data-role=visitor]:not(.sb-greeting) .sb-text",
    "assistant": ".sb-message[data-role=assistant]:not(.sb-greeting)",
    "assistant text": ".sb-message[data-role=assistant]:not(.sb-greeting) .sb-text",
    "link": ".sb-message[data-role=assistant]:not(.sb-greeting) a",
    "input": "textarea.sb-input",
    "send": "button.sb-send",
    "handoff": "button.sb-handoff",
}

STYLES_JS = """([elements, properties]) => {
    const root = document.querySelector('#supportbot-widget').shadowRoot;
    const out = {};
    for (const [name, selector] of Object.entries(elements)) {
        const el = root.querySelector(selector);
        if (!el) { out[name] = null; continue; }
        const style = getComputedStyle(el);
        const rect = el.getBoundingClientRect();
        const values = {rect: [rect.x, rect.y, rect.width, rect.height].map(Math.round)};
        for (const p of properties) values[p] = style.getPropertyValue(p);
        out[name] = values;
    }
    return out;
}"""

# Decode two PNGs in the browser; count pixels whose channels differ by more than 16,
# leaving out a margin of `inset` pixels: rounded corners show the host page behind them.
DIFF_JS = """async ([a, b, inset]) => {
    const load = async (b64) => {
        const img = new Image();
        img.src = 'data:image/png;base64,' + b64;
        await img.decode();
        const canvas = document.createElement('canvas');
        canvas.width = img.width; canvas.height = img.height;
        const ctx = canvas.getContext('2d');
        ctx.drawImage(img, 0, 0);
        return ctx.getImageData(0, 0, img.width, img.height);
    };
    const [x, y] = [await load(a), await load(b)];
    if (x.width !== y.width || x.height !== y.height)
        return {size: [[x.width, x.height], [y.width, y.height]], differing: null};
    let differing = 0, total = 0;
    for (let row = inset; row < x.height - inset; row++) {
        for (let col = inset; col < x.width - inset; col++) {
            const i = 4 * (row * x.width + col);
            total++;
            for (let c = 0; c < 3; c++) {
                if (Math.abs(x.data[i + c] - y.data[i + c]) > 16) { differing++; break; }
            }
        }
    }
    const centre = (d) => {
        const i = 4 * (Math.floor(d.height / 2) * d.width + Math.floor(d.width / 2));
        return [d.data[i], d.data[i + 1], d.data[i + 2]];
    };
    return {size: [[x.width, x.height]], differing, total,
            centres: [centre(x), centre(y)]};
}"""


def _look(new_context, url: str, llm) -> dict:
    llm.enqueue(
        Script(
            tokens=["See", " the", " [returns page](https://shop.example/returns)", "."],
            token_interval=0.01,
        )
    )
    context = new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(url)
    widget = Widget(page)
    widget.wait_ready()
    closed = page.evaluate(STYLES_JS, [{"launcher": ELEMENTS["launcher"]}, PROPERTIES])
    launcher_png = widget.launcher.screenshot(animations="disabled")
    widget.open()
    widget.send("How do I return a jacket?")
    widget.wait_reply_complete()
    expect(widget.panel).to_have_attribute("data-connection", "online")
    widget.input.blur()
    page.mouse.move(0, 0)
    widget.settle()
    return {
        "page": page,
        "host": page.evaluate(
            """() => [document.documentElement, document.body].map((e) => {
                const s = getComputedStyle(e);
                return [s.fontSize, s.color, s.fontStyle];
            })"""
        ),
        "closed": closed,
        "open": page.evaluate(STYLES_JS, [ELEMENTS, PROPERTIES]),
        "launcher_png": launcher_png,
        "panel_png": widget.panel.screenshot(animations="disabled", caret="hide"),
    }


def _differences(plain: dict, hostile: dict) -> list[str]:
    found = []
    for name, values in plain.items():
        other = hostile.get(name)
        if values is None or other is None:
            if values != other:
                found.append(
                    f"{name}: on plain page {values is not None}, hostile {other is not None}"
                )
            continue
        for prop, value in values.items():
            if other[prop] != value:
                found.append(f"{name} {prop}: plain {value!r}, hostile {other[prop]!r}")
    return found


def _pixels(page, a: bytes, b: bytes, inset: int) -> dict:
    images = [base64.b64encode(a).decode(), base64.b64encode(b).decode()]
    return page.evaluate(DIFF_JS, [*images, inset])


def test_hostile_host_css_does_not_change_the_widget(
    new_context, stack, demo_site, host_pages, llm
):
    demo_site.allowed_origins = [*demo_site.allowed_origins, host_pages.origin]
    demo_site.save(update_fields=["allowed_origins"])
    tag = script_tag(stack.http_url + "/static/supportbot/widget.js", demo_site.public_key)
    plain_url = host_pages.add("/plain.html", PAGE.format(title="Plain shop", style="", script=tag))
    hostile_url = host_pages.add(
        "/hostile.html",
        PAGE.format(title="Hostile shop", style=f"<style>{HOSTILE_CSS}</style>", script=tag),
    )

    plain = _look(new_context, plain_url, llm)
    hostile = _look(new_context, hostile_url, llm)

    # The hostile rules are in force on the page itself (or this test proves nothing).
    assert hostile["host"] == [
        ["40px", "rgb(0, 0, 0)", "normal"],
        ["30px", "rgb(0, 255, 0)", "italic"],
    ]
    assert plain["host"] != hostile["host"]
    assert plain["open"]["panel"] is not None and plain["open"]["link"] is not None, plain["open"]
    differences = _differences(plain["closed"], hostile["closed"]) + _differences(
        plain["open"], hostile["open"]
    )
    assert not differences, "the host page's CSS leaks into the widget:\n" + "\n".join(differences)
    launcher = hostile["open"]["launcher"]
    assert launcher["background-color"] not in ("rgb(255, 0, 0)", "rgba(0, 0, 0, 0)")

    # Inside the launcher's circle and the panel's rounded corners, pixel for pixel.
    for name, inset in (("launcher_png", 10), ("panel_png", 16)):
        result = _pixels(plain["page"], plain[name], hostile[name], inset)
        assert result["differing"] is not None, f"{name}: sizes differ {result['size']}"
        assert result["differing"] <= 0.002 * result["total"], f"{name}: {result}"
        assert result["centres"][0] == result["centres"][1], f"{name}: {result}"
