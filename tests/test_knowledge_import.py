"""Importing help-centre files into articles: each file type, re-imports, hostile and
random input, folders, the import_articles command and the admin's article pages."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils.html import escape

import conversations
from conversations.knowledge import importer
from conversations.knowledge.importer import (
    ImportReport,
    Parsed,
    Rejected,
    import_files,
    import_path,
    parse_file,
)
from conversations.knowledge.store import MAX_BODY_CHARS, MAX_TITLE, article_upsert
from conversations.management.commands.import_articles import Command as ImportCommand
from conversations.models import Article, Chunk, KnowledgeLexeme
from conversations.roles import ensure_agents_group

DEMO_KB = Path(conversations.__file__).parent / "demo_kb"
PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"><svg onload=alert(1)>']
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def parsed(name: str, data: bytes | str) -> Parsed:
    result = parse_file(name, data.encode() if isinstance(data, str) else data)
    assert isinstance(result, Parsed), result
    return result


def rejected(name: str, data: bytes | str) -> str:
    result = parse_file(name, data.encode() if isinstance(data, str) else data)
    assert isinstance(result, Rejected), result
    assert result.name == name
    return result.reason


# --- Each file type ----------------------------------------------------------------------


def test_markdown_with_front_matter():
    article = parsed(
        "guides/refunds.md",
        "---\ntitle: Refund policy\nurl: https://help.example.com/refunds\n"
        "tags: billing, refunds, , billing\n---\n\n"
        "# Refund policy\n\nWe refund within **14 days**.\n",
    )
    assert article.title == "Refund policy"
    assert article.url == article.source == "https://help.example.com/refunds"
    assert article.tags == ["billing", "refunds"]
    # Stored as Markdown: the heading and emphasis stay.
    assert article.body == "# Refund policy\n\nWe refund within **14 days**."
    assert article.name == "guides/refunds.md"


def test_front_matter_variants_bom_and_crlf():
    data = (
        "\ufeff---\r\ntitle: 'Returns: the basics'\r\nURL: https://help.example.com/returns\r\n"
        'tags:\r\n  - returns\r\n  - "shipping"\r\nauthor: ignored\r\n---\r\nBody line.\r\n'
    ).encode()
    article = parsed("returns.markdown", data)
    assert article.title == "Returns: the basics"
    assert article.url == "https://help.example.com/returns"
    assert article.tags == ["returns", "shipping"]
    assert article.body == "Body line."
    assert parsed("x.md", "---\ntags: [a, 'b c']\n---\ntext").tags == ["a", "b c"]
    # An unclosed front matter is no front matter: the text stays whole.
    assert parsed("x.md", "---\ntitle: x\nbody").body == "---\ntitle: x\nbody"


def test_markdown_without_front_matter_takes_the_first_heading_else_the_file_name():
    article = parsed("a.md", "Intro text.\n\n# Track your order\n\n## Steps\n\nOpen the app.")
    assert article.title == "Track your order"
    assert article.url == "" and article.source == "a.md" and article.tags == []
    assert parsed("kb/10-refund_policy.MD", "Just text.").title == "10 refund policy"
    # An empty front-matter title falls back the same way.
    assert parsed("x.md", "---\ntitle:\n---\n# From heading\n\ntext").title == "From heading"


def test_text_files():
    article = parsed("notes/opening-hours.txt", "\n\nOpening hours\nWe are open 9 to 5.\nMon-Fri.")
    assert article.title == "Opening hours"
    assert article.body == "We are open 9 to 5.\nMon-Fri."
    assert article.source == "notes/opening-hours.txt"
    long_first = "A first line that is really a paragraph. " * 4
    article = parsed("faq.txt", f"{long_first}\nMore.")
    assert article.title == "faq" and article.body.startswith("A first line")
    # A lone line is the article's text, not a title over nothing.
    article = parsed("one.txt", "We ship worldwide.")
    assert (article.title, article.body) == ("one", "We ship worldwide.")


HTML_PAGE = """<!DOCTYPE html>
<html><head>
  <meta charset="utf-8"><title>Refunds &amp; returns | Help</title>
  <link rel="stylesheet" href="/s.css"><link rel="Canonical" href="https://help.example.com/refunds">
  <meta property="og:url" content="https://other.example.com/x">
  <meta name="keywords" content="billing, refunds">
  <style>body { color: red } .secret-style {}</style>
  <script>var secretScript = 1;</script>
</head>
<body>
  <svg><title>svg-title</title><text>svg-text</text></svg>
  <h1>Refunds  and
     returns</h1>
  <p>We refund <a href="https://help.example.com/x">within <b>14&nbsp;days</b></a>.<br>Ask us.</p>
  <script>alert(1)</script><noscript>noscript-text</noscript>
  <template><p>template-text</p></template><iframe src="x">iframe-text</iframe>
  <h2>Steps</h2>
  <ul><li>Open <em>Orders</em></li><li>Choose the item</li></ul>
  <table><tr><th>Plan</th><th>Refund</th></tr><tr><td>Yearly</td><td>14 days</td></tr></table>
  <!-- comment-text -->
</body></html>"""


def test_html_is_cleaned_to_markdown_text():
    article = parsed("refunds.html", HTML_PAGE)
    assert article.title == "Refunds & returns | Help"
    # The canonical link wins over og:url.
    assert article.url == article.source == "https://help.example.com/refunds"
    assert article.tags == ["billing", "refunds"]
    assert article.body == (
        "# Refunds and returns\n\n"
        "We refund within 14\xa0days.\nAsk us.\n\n"
        "## Steps\n\n"
        "- Open Orders\n- Choose the item\n\n"
        "Plan Refund\nYearly 14 days"
    )
    for hidden in ("secret", "alert", "svg-", "noscript-", "template-", "iframe-", "comment-",
                   "color", "<", "Help</"):  # fmt: skip
        assert hidden not in article.body, hidden


def test_html_title_and_url_fallbacks():
    article = parsed(
        "page.htm",
        '<meta property="og:url" content="https://help.example.com/og">'
        "<h1>Heading <i>title</i></h1><p>Text.</p><h1>Second</h1>",
    )
    assert article.title == "Heading title"
    assert article.url == "https://help.example.com/og"
    article = parsed("no-title.html", "<p>Only a paragraph.</p>")
    assert (article.title, article.url, article.source) == ("no title", "", "no-title.html")
    # A head that is never closed ends where the body's content begins.
    article = parsed("open.html", "<html><head><title>T</title><p>Body text.</p>")
    assert (article.title, article.body) == ("T", "Body text.")


# --- Hostile files -----------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06"
HOSTILE = {
    "huge.md": (b"a" * (2 * 1024 * 1024), "too large (2,097,152 bytes; the limit is 1 MB)"),
    "image.md": (PNG, "binary file"),
    "image.html": (PNG + b"<p>x</p>", "binary file"),
    "controls.txt": (bytes(range(1, 32)) * 20, "binary file"),
    "latin1.md": (b"Caf\xe9 menu", "not UTF-8 text (byte 0xe9 at offset 3; save it as UTF-8)"),
    "bom-latin1.txt": (b"\xef\xbb\xbfab\xff", "not UTF-8 text (byte 0xff at offset 5; "),
    "empty.md": (b"", "no text"),
    "blank.txt": (b" \n\t\n\r\n", "no text"),
    "front-matter-only.md": (b"---\ntitle: Nothing\n---\n", "no text"),
    "heading-only.md": (b"# Heading\n\n## Another\n", "no text"),
    "scripts-only.html": (b"<script>alert(1)</script><style>p{}</style>", "no text"),
    "program.exe": (b"MZ\x90\x00", "unsupported type .exe; use .md, .txt or .html"),
    "manual.pdf": (b"%PDF-1.7", "unsupported type .pdf; use .md, .txt or .html"),
    "Makefile": (b"all:", "unsupported file type (no extension); use .md, .txt or .html"),
    "js-url.md": (
        b"---\ntitle: x\nurl: javascript:alert(1)\n---\ntext",
        "url must start with http:// or https:// (got 'javascript:alert(1)')",
    ),
    "data-url.md": (b"---\nurl: data:text/html,<b>x\n---\ntext", "url must start with http"),
    "relative-url.html": (b'<link rel=canonical href="/a"><p>x</p>', "url must start with http"),
    "spaced-url.md": (b"---\nurl: https://exa mple.com/\n---\ntext", "url is not a valid web"),
    "long-url.md": (
        b"---\nurl: https://example.com/" + b"a" * 600 + b"\n---\ntext",
        "url too long (620 characters; the limit is 500)",
    ),
    "long-body.txt": (
        b"Title\n" + b"word " * (MAX_BODY_CHARS // 5 + 10),
        "text too long (200,049 characters; the limit is 200,000)",
    ),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_files_are_rejected_with_a_clear_reason(name):
    data, reason = HOSTILE[name]
    assert rejected(name, data).startswith(reason)


def test_hostile_files_store_nothing(site):
    Article.objects.create(site=site, title="Kept", body="Kept.")
    report = import_files(site, [(name, data) for name, (data, _) in HOSTILE.items()])
    assert [r.name for r in report.rejected] == list(HOSTILE)
    assert report.added == report.updated == report.unchanged == []
    assert list(Article.objects.values_list("title", flat=True)) == ["Kept"]


def test_markup_in_markdown_stays_inert_text_and_html_loses_its_scripts(site):
    md = "# Tips\n\nPaste <script>alert(1)</script> and <img src=x onerror=alert(1)> here."
    html = "<h1>Tips</h1><p>Before<script>alert(1)</script> after</p><p onclick=alert(2)>x</p>"
    report = import_files(site, [("tips.md", md.encode()), ("tips.html", html.encode())])
    assert report.added == ["tips.md", "tips.html"]
    stored = Article.objects.get(source="tips.md")
    # Text, never rendered as HTML: kept exactly as written.
    assert "Paste <script>alert(1)</script> and <img src=x onerror=alert(1)> here." in stored.body
    assert "<script>" in Chunk.objects.get(article=stored).text
    cleaned = Article.objects.get(source="tips.html")
    assert cleaned.body == "# Tips\n\nBefore after\n\nx"
    assert "alert" not in "".join(
        Chunk.objects.filter(article=cleaned).values_list("text", flat=True)
    )


def test_control_characters_are_stripped_and_titles_truncated():
    # A NUL past the first 8 KB is a stray byte, not a binary file.
    data = b"---\ntitle: Be\x07ll\x1b[31m\n---\nLine\x1b[0m one\r\nTab\there\x0cnext" + (
        b" " * 9000 + b"\x00end"
    )
    article = parsed("c.md", data)
    assert article.title == "Bell[31m"
    assert article.body.startswith("Line[0m one\nTab\there\nnext")
    assert article.body.endswith("end") and "\x00" not in article.body
    assert len(parsed("t.md", f"# {'x' * 400}\n\ntext").title) == MAX_TITLE
    # A file name with escape sequences and undecodable bytes is shown safely.
    name = parse_file("ev\x1bil\udcff.md", b"text").name
    assert name == "ev?il?.md"


def test_a_long_url_is_a_short_unique_source():
    base = "https://help.example.com/" + "a" * 320
    first, second = (
        parsed("a.md", f"---\nurl: {base}1\n---\nx"),
        parsed("b.md", f"---\nurl: {base}2\n---\nx"),
    )
    assert len(first.source) == len(second.source) == 300
    assert first.source != second.source and first.url == base + "1"


# --- Random input --------------------------------------------------------------------------

TOKENS = [
    "<", ">", "</", "/>", "<script>", "</script>", "<style>", "</style>", "<svg>", "</svg>",
    "<head>", "</head>", "<body>", "<title>", "</title>", "<h1>", "</h1>", "<h3>", "<li>",
    "<br/>", "<pre>", "</pre>", "<p>", "</p>", "<table><tr><td>", "<!--", "-->",
    "<![CDATA[", "]]>", "<!DOCTYPE html [", "<?xml ?>", "<![if !IE]>", "&", "&#", "&#0;",
    "&#x110000;", "&amp;", "&nbsp;", "---\n", "...\n", "title:", "url:", "tags:", "\n  - ",
    "# ", "## ", "\n", "\r", "\t", "\x1b", "\x7f", "\u202e", "\ufeff", "é", "😀",
    "javascript:", "http://", "https://x.example/", "<link rel=canonical href=",
    "<meta property=og:url content=", '"', "'", "=", "word", "Refund policy", "a" * 90,
]  # fmt: skip
EXTENSIONS = [".md", ".markdown", ".txt", ".html", ".htm"]


def random_inputs(seed: int, count: int, separator: str = "") -> list[bytes]:
    rng = random.Random(seed)
    inputs = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            inputs.append(rng.randbytes(rng.randint(0, 3000)))
        elif kind < 0.4:
            # Mostly text with a few bad bytes: past the binary check, into decoding.
            text = bytearray("".join(rng.choices(TOKENS[40:], k=50)).encode())
            for _ in range(rng.randint(1, 3)):
                text.insert(rng.randint(0, len(text)), rng.choice([0, *range(128, 256)]))
            inputs.append(bytes(text))
        else:
            soup = separator.join(rng.choices(TOKENS, k=rng.randint(1, 200)))
            inputs.append(soup.encode("utf-8", "surrogatepass"))
    return inputs


KNOWN_REASONS = re.compile(
    r"binary file|not UTF-8 text \(byte 0x[0-9a-f]{2} at offset \d+; |no text$|url must start|"
    r"url is not a valid|url too long|text too long"
)


def check_parsed(result: Parsed | Rejected) -> None:
    if isinstance(result, Rejected):
        # Not "could not be read as ...": the parsers themselves never failed.
        assert KNOWN_REASONS.match(result.reason), result
        return
    for text in (result.title, result.url, result.source, *result.tags):
        assert not CONTROL.search(text) and "\n" not in text
    assert not CONTROL.search(result.body.replace("\n", "").replace("\t", ""))
    assert 0 < len(result.title) <= MAX_TITLE
    assert 0 < len(result.body) <= MAX_BODY_CHARS
    assert len(result.source) <= 300 and len(result.tags) <= 30
    assert result.url == "" or result.url.lower().startswith(("http://", "https://"))


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_random_input_never_raises(extension):
    outcomes = {"parsed": 0, "rejected": 0}
    for i, data in enumerate(random_inputs(seed=EXTENSIONS.index(extension), count=400)):
        result = parse_file(f"fuzz-{i}{extension}", data)
        check_parsed(result)
        outcomes["parsed" if isinstance(result, Parsed) else "rejected"] += 1
    # Both paths were exercised, not just the binary check.
    assert outcomes["parsed"] > 20 and outcomes["rejected"] > 20, outcomes


def test_random_input_imports_without_errors(site):
    files = [
        (f"fuzz-{i}{EXTENSIONS[i % len(EXTENSIONS)]}", data)
        for i, data in enumerate(random_inputs(seed=7, count=150, separator=""))
    ]
    report = import_files(site, files)
    total = len(report.added) + len(report.updated) + len(report.unchanged) + len(report.rejected)
    assert total == len(files) and report.added
    assert not [r for r in report.rejected if "saved" in r.reason]
    assert Article.objects.filter(site=site).count() == len(report.added)


def test_an_article_with_a_long_link_is_stored(site):
    link = "https://help.example.com/articles/" + "-".join(["reset-your-password"] * 6)
    report = import_files(site, [("long-link.md", f"See [the guide]({link}).".encode())])
    assert report.added == ["long-link.md"], report.rejected


# --- Importing -------------------------------------------------------------------------------


def test_the_demo_help_centre_imports_once_then_is_unchanged(site):
    first = import_path(site, DEMO_KB)
    assert len(first.added) == 30 and first.added[0] == "01-create-account.md"
    assert first.updated == first.unchanged == first.rejected == []
    assert first.summary() == "30 added, 0 updated, 0 unchanged, 0 rejected"
    refund = Article.objects.get(site=site, title="Refund policy")
    assert refund.source == refund.url == "https://help.lumen.example/articles/refund-policy"
    assert refund.tags == ["billing", "refunds", "lumen plus", "money back"]
    assert refund.chunks.exists() and refund.chunks.filter(heading="Lumen Plus").exists()
    stamps = dict(Article.objects.values_list("pk", "updated_at"))

    second = import_path(site, DEMO_KB)
    assert len(second.unchanged) == 30 and second.summary().startswith("0 added, 0 updated, 30")
    assert dict(Article.objects.values_list("pk", "updated_at")) == stamps


def test_an_edited_file_is_updated_and_its_chunks_rebuilt(site, tmp_path):
    file = tmp_path / "10-refund-policy.md"
    shutil.copy(DEMO_KB / file.name, file)
    assert import_path(site, file).added == [file.name]
    article = Article.objects.get(site=site)
    old_chunks = set(article.chunks.values_list("pk", flat=True))

    file.write_text(
        file.read_text().replace("within **14 days**", "within **21 days**")
        + "\n## Gift cards\n\nGift cards are refunded as store credit.\n"
    )
    report = import_path(site, file)
    assert report.updated == [file.name] and not report.added
    article.refresh_from_db()
    assert Article.objects.count() == 1 and "21 days" in article.body
    chunks = article.chunks.all()
    assert not old_chunks & {c.pk for c in chunks}
    assert any("21 days" in c.text for c in chunks)
    assert chunks.get(heading="Gift cards").text == "Gift cards are refunded as store credit."
    assert import_path(site, file).unchanged == [file.name]


def test_files_with_one_source_in_one_import(site):
    page = b"---\nurl: https://help.example.com/a\n---\ntext"
    report = import_files(site, [("one.md", page), ("two.md", page + b" changed")])
    assert report.added == ["one.md"]
    assert report.rejected == [
        Rejected("two.md", "same url or name as one.md; only that one was imported")
    ]


def test_a_folder_is_read_recursively_in_order_without_hidden_files_or_escapes(site, tmp_path):
    kb = tmp_path / "kb"
    (kb / "sub" / "deeper").mkdir(parents=True)
    (kb / ".git").mkdir()
    (kb / "b.md").write_text("# B\n\nbee")
    (kb / "a.txt").write_text("A\nay")
    (kb / "sub" / "c.html").write_text("<h1>C</h1><p>sea</p>")
    (kb / "sub" / "deeper" / "d.md").write_text("dee")
    (kb / ".hidden.md").write_text("hidden")
    (kb / ".git" / "e.md").write_text("hidden")
    (kb / "notes.docx").write_bytes(b"PK\x03\x04")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "s.md").write_text("secret text")
    (kb / "escape.md").symlink_to(outside / "s.md")
    (kb / "escape-dir").symlink_to(outside, target_is_directory=True)
    (kb / "alias.md").symlink_to(kb / "b.md")
    (kb / "loop-dir").symlink_to(kb, target_is_directory=True)
    os.mkfifo(kb / "pipe.md")

    report = import_path(site, kb)
    assert report.added == ["a.txt", "alias.md", "b.md", "sub/c.html", "sub/deeper/d.md"]
    assert {r.name: r.reason for r in report.rejected} == {
        "escape-dir": "symlink to outside the folder",
        "escape.md": "symlink to outside the folder",
        "notes.docx": "unsupported type .docx; use .md, .txt or .html",
        "pipe.md": "not a regular file",
    }
    assert not Article.objects.filter(body__contains="secret").exists()
    assert not Article.objects.filter(body="hidden").exists()
    assert Article.objects.get(source="sub/c.html").title == "C"


def test_too_many_files_import_nothing(site, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "MAX_FILES", 3)
    for i in range(4):
        (tmp_path / f"{i}.md").write_text("text")
    with pytest.raises(importer.TooManyFiles, match="more than 3 files"):
        import_path(site, tmp_path)
    assert not Article.objects.exists()


def test_a_large_file_in_a_folder_is_refused_unread(site, tmp_path):
    big = tmp_path / "big.md"
    with big.open("wb") as file:
        file.truncate(5 * 1024 * 1024)  # sparse: its size, without writing it
    assert import_path(site, tmp_path).rejected == [
        Rejected("big.md", "too large (5,242,880 bytes; the limit is 1 MB)")
    ]


# --- The management command ----------------------------------------------------------------


def run_command(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("import_articles", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def test_the_command_prints_each_file_and_totals(site):
    output, error = run_command(str(DEMO_KB), "--site-key", site.public_key)
    assert error is None
    lines = output.splitlines()
    assert lines[0] == "added      01-create-account.md"
    assert lines[-1] == "30 added, 0 updated, 0 unchanged, 0 rejected"
    assert Article.objects.filter(site=site, published=True).count() == 30

    output, error = run_command(str(DEMO_KB), "--site-key", site.public_key)
    assert error is None and "unchanged  30-contact-support.md" in output
    assert output.splitlines()[-1] == "0 added, 0 updated, 30 unchanged, 0 rejected"


def test_the_command_reports_rejections_and_exits_1(site, tmp_path):
    (tmp_path / "ok.md").write_text("# OK\n\nfine")
    (tmp_path / "tool.exe").write_bytes(b"MZ")
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe")
    output, error = run_command(str(tmp_path), f"--site-key={site.public_key}", "--unpublished")
    assert error is not None and error.returncode == 1
    assert str(error) == "2 files were rejected."
    assert output.splitlines() == [
        "added      ok.md",
        "rejected   bad.md: not UTF-8 text (byte 0xff at offset 0; save it as UTF-8)",
        "rejected   tool.exe: unsupported type .exe; use .md, .txt or .html",
        "1 added, 0 updated, 0 unchanged, 2 rejected",
    ]
    article = Article.objects.get(site=site)
    # Unpublished: stored, but without chunks, so retrieval never finds it.
    assert not article.published and not article.chunks.exists()


def test_the_command_refuses_an_unknown_site_or_a_missing_path(site, tmp_path):
    _, error = run_command(str(DEMO_KB), "--site-key", "site_nope")
    assert error.returncode == 2 and str(error) == "No site has the key 'site_nope'."
    _, error = run_command(str(tmp_path / "missing"), "--site-key", site.public_key)
    assert error.returncode == 2 and str(error).endswith("missing does not exist.")
    assert not Article.objects.exists()


def test_the_command_exit_status(site, tmp_path, capsys):
    def exit_code(*args: str) -> int:
        try:
            ImportCommand().run_from_argv(["manage.py", "import_articles", *args])
        except SystemExit as exc:
            return exc.code
        return 0

    (tmp_path / "ok.txt").write_text("Title\ntext")
    assert exit_code(str(tmp_path), "--site-key", site.public_key) == 0
    (tmp_path / "empty.md").write_text("")
    assert exit_code(str(tmp_path), "--site-key", site.public_key) == 1
    assert "CommandError: 1 file was rejected." in capsys.readouterr().err
    assert exit_code(str(tmp_path), "--site-key", "site_nope") == 2


# --- The admin -----------------------------------------------------------------------------------

IMPORT_URL = reverse("admin:conversations_article_import")
ARTICLES = reverse("admin:conversations_article_changelist")


def evil(label: str) -> str:
    return f"{label} " + " ".join(PAYLOADS)


def assert_escaped(html: str, *texts: str) -> None:
    for payload in PAYLOADS:
        assert payload not in html
    assert not re.search(r"<(script|img|svg)[^>]*alert\(1\)", html, re.I)
    for text in texts:
        assert escape(text) in html, f"{text!r} missing or not escaped"


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def agent(django_user_model):
    user = django_user_model.objects.create_user("agent", is_staff=True)
    user.groups.add(ensure_agents_group())
    return user


def test_an_administrator_imports_uploaded_files(client, site, superuser):
    client.force_login(superuser)
    changelist = client.get(ARTICLES).content.decode()
    assert f'href="{IMPORT_URL}"' in changelist and "Import files" in changelist
    page = client.get(IMPORT_URL).content.decode()
    assert 'type="file" name="files" multiple' in page and 'enctype="multipart/form-data"' in page

    files = [
        SimpleUploadedFile("shipping.md", b"---\ntitle: Shipping\n---\nWe ship in 2 days."),
        SimpleUploadedFile("hours.html", b"<title>Hours</title><p>9 to 5</p><script>x()</script>"),
    ]
    response = client.post(IMPORT_URL, {"site": site.pk, "files": files, "published": "on"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Import report: 2 added, 0 updated, 0 unchanged, 0 rejected" in html
    assert "<li>shipping.md</li>" in html and "<li>hours.html</li>" in html
    assert sorted(Article.objects.filter(site=site).values_list("title", flat=True)) == [
        "Hours",
        "Shipping",
    ]
    assert Article.objects.get(title="Hours").body == "9 to 5"

    again = [
        SimpleUploadedFile("shipping.md", b"---\ntitle: Shipping\n---\nWe ship in 3 days."),
        SimpleUploadedFile("hours.html", b"<title>Hours</title><p>9 to 5</p>"),
        SimpleUploadedFile("empty.txt", b""),
        SimpleUploadedFile("big.md", b"x" * (1024 * 1024 + 1)),
    ]
    response = client.post(IMPORT_URL, {"site": site.pk, "files": again, "published": "on"})
    html = response.content.decode()
    assert "0 added, 1 updated, 1 unchanged, 2 rejected" in html
    assert "<li>empty.txt: <span" in html and ">no text<" in html
    assert "<li>big.md: <span" in html
    assert "too large (1,048,577 bytes; the limit is 1 MB)" in html
    assert "3 days" in Article.objects.get(title="Shipping").body

    # Without the checkbox, the import is unpublished: an update, and no chunks.
    hours = SimpleUploadedFile("hours.html", b"<title>Hours</title><p>9 to 5</p>")
    html = client.post(IMPORT_URL, {"site": site.pk, "files": [hours]}).content.decode()
    assert "0 added, 1 updated, 0 unchanged, 0 rejected" in html
    hours = Article.objects.get(title="Hours")
    assert not hours.published and not hours.chunks.exists()


def test_the_import_form_needs_a_site_and_files(client, site, superuser):
    client.force_login(superuser)
    html = client.post(IMPORT_URL, {}).content.decode()
    assert html.count("This field is required.") == 2
    assert not Article.objects.exists()


def test_agents_and_visitors_cannot_reach_articles(client, site, agent, django_user_model):
    article, _ = article_upsert(site=site, source="a.md", title="A", body="text")
    client.force_login(agent)
    upload = SimpleUploadedFile("x.md", b"text")
    assert client.post(IMPORT_URL, {"site": site.pk, "files": [upload]}).status_code == 403
    assert client.get(IMPORT_URL).status_code == 403
    assert client.get(ARTICLES).status_code == 403
    change = reverse("admin:conversations_article_change", args=[article.pk])
    assert client.get(change).status_code == 403
    assert ARTICLES not in client.get(reverse("admin:index")).content.decode()
    assert list(Article.objects.values_list("title", flat=True)) == ["A"]

    client.force_login(django_user_model.objects.create_user("someone"))
    response = client.get(IMPORT_URL)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_article_pages_escape_titles_bodies_and_file_names(client, site, superuser):
    article, _ = article_upsert(
        site=site,
        source="evil.md",
        title=evil("title"),
        body=f"# {evil('heading')}\n\n{evil('body')}",
        url="https://help.example.com/evil",
    )
    client.force_login(superuser)
    html = client.get(ARTICLES).content.decode()
    assert_escaped(html, evil("title"))
    assert '<td class="field-chunk_count">1</td>' in html
    html = client.get(reverse("admin:conversations_article_change", args=[article.pk])).content
    html = html.decode()
    assert_escaped(html, evil("title"), evil("heading"), evil("body"))
    assert html.count(escape(evil("body"))) == 2  # in the body field and the chunk list

    names = ["<img src=x onerror=alert(1)>.md", '"><svg onload=alert(1)>.exe']
    files = [
        SimpleUploadedFile(names[0], f"---\ntitle: {evil('t')}\n---\n{evil('b')}".encode()),
        SimpleUploadedFile(names[1], b"MZ"),
        SimpleUploadedFile("u.md", b"---\nurl: javascript:<script>alert(1)</script>\n---\nx"),
    ]
    html = client.post(IMPORT_URL, {"site": site.pk, "files": files}).content.decode()
    assert_escaped(html, *names, "url must start with http:// or https:// (got 'javascript:")
    assert "1 added, 0 updated, 0 unchanged, 2 rejected" in html
    html = client.get(ARTICLES).content.decode()
    assert_escaped(html, evil("t"))


def test_saving_an_article_in_the_admin_rebuilds_its_chunks(client, site, superuser):
    article, _ = article_upsert(site=site, source="a.md", title="Old", body="# Old\n\nold text")
    old_chunks = set(article.chunks.values_list("pk", flat=True))
    client.force_login(superuser)
    change = reverse("admin:conversations_article_change", args=[article.pk])
    form = {
        "site": site.pk,
        "title": "New",
        "body": "# New heading\n\nnew text",
        "url": "https://help.example.com/new",
        "tags": '["billing"]',
        "published": "on",
        "_save": "Save",
    }
    response = client.post(change, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    chunks = list(Chunk.objects.filter(article=article))
    assert [(c.heading, c.text) for c in chunks] == [("New heading", "new text")]
    assert not old_chunks & {c.pk for c in chunks}
    article.refresh_from_db()
    assert (article.title, article.tags, article.source) == ("New", ["billing"], "a.md")

    # Unpublishing removes the chunks; a bad url or tags are refused.
    response = client.post(change, {**form, "published": ""})
    assert response.status_code == 302 and not Chunk.objects.filter(article=article).exists()
    for field, value in (("url", "ftp://example.com/x"), ("tags", '"billing"')):
        response = client.post(change, {**form, field: value})
        assert response.status_code == 200 and "errorlist" in response.content.decode(), field


def test_deleting_in_the_admin_keeps_the_word_counts_right(client, site, superuser):
    for name in ("a", "b", "c"):
        article_upsert(site=site, source=name, title=name, body=f"# {name}\n\nRefund text.")

    def chunk_count() -> int:
        return KnowledgeLexeme.objects.get(site=site, lexeme="").chunks

    assert chunk_count() == 3
    client.force_login(superuser)
    first = Article.objects.get(source="a")
    delete = reverse("admin:conversations_article_delete", args=[first.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert chunk_count() == 2
    rest = list(Article.objects.values_list("pk", flat=True))
    form = {"action": "delete_selected", "_selected_action": rest, "post": "yes"}
    assert client.post(ARTICLES, form).status_code == 302
    assert not Article.objects.exists() and chunk_count() == 0
    assert KnowledgeLexeme.objects.get(site=site, lexeme="refund").chunks == 0


def test_an_empty_report_has_a_summary():
    assert ImportReport().summary() == "0 added, 0 updated, 0 unchanged, 0 rejected"
