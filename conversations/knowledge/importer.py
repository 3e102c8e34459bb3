"""Help-centre files (Markdown, plain text, HTML) turned into a site's articles.

Every file is untrusted. It is checked (type, size, binary, UTF-8), cleaned to plain
text and stored through `article_upsert`, or rejected with a reason a person can act
on; nothing here raises because of what a file contains. Bodies are stored as text
and never rendered as HTML, so markup left in a Markdown or text file stays inert.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import DatabaseError

from conversations.knowledge.chunking import chunk
from conversations.knowledge.store import (
    MAX_BODY_CHARS,
    MAX_TAGS,
    MAX_TITLE,
    MAX_URL,
    article_upsert,
)
from conversations.models import Article, Site

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 1024 * 1024
MAX_FILES = 5000
# A first line longer than this is a paragraph, not a title.
MAX_TEXT_TITLE = 120
MAX_TAG_CHARS = 100
MAX_SOURCE = Article._meta.get_field("source").max_length
TYPES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html",
         ".htm": "html"}  # fmt: skip


@dataclass
class Parsed:
    title: str
    body: str
    url: str
    tags: list[str]
    source: str
    # The file's name as the report shows it.
    name: str = ""


@dataclass
class Rejected:
    name: str
    reason: str


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.rejected)} rejected"
        )


class TooManyFiles(ValueError):
    """A folder with more files than one import takes; nothing was imported."""


# --- Checks and text hygiene -------------------------------------------------------

# Bytes that plain text does not contain (tab, newline, form feed and CR are text).
_CONTROL_BYTES = bytes([*range(0, 9), 11, *range(14, 32), 127])
_TEXT_BYTES = bytes(b for b in range(256) if b not in _CONTROL_BYTES)
# Control characters other than tab and newline, BOMs and non-characters: invisible,
# and PostgreSQL refuses NUL outright.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
_URL_SHAPE = URLValidator(schemes=["http", "https"])


def check_size(name: str, size: int) -> Rejected | None:
    """The rejection for a file of `size` bytes, if too large; lets callers refuse a
    large file before reading it."""
    if size > MAX_FILE_BYTES:
        return Rejected(clean_name(name), f"too large ({size:,} bytes; the limit is 1 MB)")
    return None


def clean_name(name: str) -> str:
    # File names can hold escape sequences (terminal output) and undecodable bytes
    # (os.walk gives them as surrogates, which neither stdout nor PostgreSQL accept).
    name = name.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL_CHARS.sub("?", name.replace("\n", "?").replace("\t", " "))


def clean_text(text: str) -> str:
    """Unix newlines, no control characters but tab and newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate({0x0B: "\n", 0x0C: "\n", 0x2028: "\n", 0x2029: "\n"})
    return _CONTROL_CHARS.sub("", text)


def _one_line(text: str) -> str:
    return " ".join(clean_text(text).split())


def _looks_binary(data: bytes) -> bool:
    # Git's rule: a NUL in the first 8 KB is binary; a stray one later is stripped.
    sample = data[:8000]
    if b"\x00" in sample:
        return True
    # Text has a stray control byte at most; binary formats are full of them.
    return len(sample.translate(None, _TEXT_BYTES)) > len(sample) // 10


def _url_problem(url: str) -> str | None:
    shown = url if len(url) <= 80 else url[:77] + "..."
    if not re.match(r"https?://", url, re.IGNORECASE):
        return f"url must start with http:// or https:// (got {shown!r})"
    if len(url) > MAX_URL:
        return f"url too long ({len(url)} characters; the limit is {MAX_URL})"
    try:
        _URL_SHAPE(url)
    except ValidationError:
        return f"url is not a valid web address (got {shown!r})"
    return None


def _tags(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return _tag_list(value.split(","))


def _tag_list(items: Iterable[str]) -> list[str]:
    tags: list[str] = []
    for item in items:
        tag = _unquote(_one_line(item))[:MAX_TAG_CHARS]
        if tag and tag not in tags:
            tags.append(tag)
    return tags[:MAX_TAGS]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def _title_from_name(name: str) -> str:
    # "guides/10-refund_policy.md" -> "10 refund policy": words search can match.
    stem = PurePosixPath(name).stem
    return " ".join(re.sub(r"[-_]+", " ", stem).split()) or name or "Untitled"


def _fit_source(source: str) -> str:
    # The column is shorter than a URL may be; a digest of the whole keeps it unique.
    if len(source) <= MAX_SOURCE:
        return source
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{source[: MAX_SOURCE - len(digest) - 1]}#{digest}"


# --- Markdown and plain text ---------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?:(.*?)\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_KEY = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:(.*)$")
_FRONT_ITEM = re.compile(r"^[ \t]+-[ \t]*(.*)$|^-[ \t]+(.*)$")
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _front_matter(text: str) -> tuple[dict[str, str | list[str]], str]:
    """(fields, rest) for `---` delimited `key: value` lines; a YAML subset, enough
    for title, url and tags (as `a, b`, `[a, b]` or `- a` lines)."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text
    fields: dict[str, str | list[str]] = {}
    key = None
    for line in (match.group(1) or "").split("\n"):
        item = _FRONT_ITEM.match(line)
        if item and key is not None and isinstance(fields.get(key), list):
            fields[key].append(item.group(1) or item.group(2) or "")  # type: ignore[union-attr]
            continue
        pair = _FRONT_KEY.match(line)
        if pair is None:
            continue
        key, value = pair.group(1).lower(), pair.group(2).strip()
        # An empty value may start a `- item` list.
        fields[key] = value if value else []
    return fields, text[match.end() :]


def _markdown(text: str) -> tuple[str, str, str, list[str]]:
    fields, body = _front_matter(text)

    def field_text(key: str) -> str:
        value = fields.get(key, "")
        return _unquote(_one_line(value)) if isinstance(value, str) else ""

    raw_tags = fields.get("tags", "")
    tags = _tags(raw_tags) if isinstance(raw_tags, str) else _tag_list(raw_tags)
    title = field_text("title")
    if not title:
        heading = _H1.search(body)
        title = _one_line(heading.group(1)) if heading else ""
    return title, body, field_text("url"), tags


def _text(text: str) -> tuple[str, str, str, list[str]]:
    lines = text.strip().split("\n")
    first, rest = lines[0].strip(), "\n".join(lines[1:])
    # A lone line is the whole article, not a title over nothing.
    if len(first) <= MAX_TEXT_TITLE and rest.strip():
        return first, rest, "", []
    return "", text, "", []


# --- HTML ----------------------------------------------------------------------------

_SKIPPED = {"script", "style", "noscript", "template", "iframe", "svg", "head"}
# What may stand in <head>; anything else there means the body began unannounced.
_HEAD_TAGS = {"title", "meta", "link", "base", "style", "script", "noscript", "template"}
_BLOCKS = {
    "address", "article", "aside", "blockquote", "caption", "details", "dd", "div", "dl",
    "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "main",
    "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "ul",
}  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _HTMLText(HTMLParser):
    """Readable text of an HTML page: headings as Markdown `#` lines, blocks, list
    items and <br> as line breaks, links as their text; scripts, styles, embedded
    documents and the head left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping: list[str] = []
        self.title = ""
        self.h1 = ""
        self.canonical = ""
        self.og_url = ""
        self.keywords = ""
        self._title_parts: list[str] | None = None
        self._h1_parts: list[str] | None = None
        self._heading = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: (value or "") for key, value in attrs}
        if tag == "link" and "canonical" in values.get("rel", "").lower().split():
            self.canonical = self.canonical or values.get("href", "").strip()
        elif tag == "meta":
            if values.get("property", "").lower() == "og:url":
                self.og_url = self.og_url or values.get("content", "").strip()
            if values.get("name", "").lower() == "keywords":
                self.keywords = self.keywords or values.get("content", "")
        if self.skipping[-1:] == ["head"] and (tag == "body" or tag not in _HEAD_TAGS):
            self.skipping.pop()
        if tag == "title" and not self.title and set(self.skipping) <= {"head"}:
            self._title_parts = []
            return
        if tag in _SKIPPED:
            self.skipping.append(tag)
        if self.skipping:
            return
        if tag in _HEADINGS:
            if self._heading:  # a heading inside a heading ends the first, as browsers do
                self.handle_endtag("h1")
            self._break("\n\n" + "#" * _HEADINGS[tag] + " ")
            self._heading = _HEADINGS[tag]
            if tag == "h1" and not self.h1:
                self._h1_parts = []
        elif tag == "li":
            self._break("\n- ")
        elif tag == "br":
            self._break("\n")
        elif tag in ("td", "th"):
            self._write(" ")
        elif tag in _BLOCKS:
            self._break("\n\n")
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title_parts is not None:
            self.title = _one_line("".join(self._title_parts))
            self._title_parts = None
            return
        if tag in _SKIPPED and tag in self.skipping:
            # Closes the innermost open one, and anything left open inside it.
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]
            return
        if self.skipping:
            return
        if tag in _HEADINGS and self._heading:
            self._heading = 0
            if self._h1_parts is not None:
                self.h1 = _one_line("".join(self._h1_parts))
                self._h1_parts = None
            self._break("\n\n")
        elif tag == "tr":
            self._break("\n")
        elif tag in _BLOCKS or tag == "li":
            self._break("\n\n" if tag != "li" else "\n")
            if tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._title_parts is not None:
            self._title_parts.append(data)
            return
        if self.skipping:
            return
        if self._h1_parts is not None:
            self._h1_parts.append(data)
        if self._pre and not self._heading:
            self.parts.append(data)
        else:
            # HTML's whitespace only: a no-break space is meant to stay.
            self._write(re.sub(r"[ \t\n\f]+", " ", data))

    def _write(self, text: str) -> None:
        # Whitespace collapses as a browser shows it: no space at a line's start.
        if text.startswith(" ") and (not self.parts or self.parts[-1][-1:] in (" ", "\n")):
            text = text[1:]
        if text:
            self.parts.append(text)

    def _break(self, text: str) -> None:
        # A heading stays on one line, whatever its markup holds.
        if self._heading:
            self._write(" ")
            return
        while self.parts and self.parts[-1].endswith(" ") and not self._pre:
            self.parts[-1] = self.parts[-1].rstrip(" ")
            if not self.parts[-1]:
                self.parts.pop()
        # Only the newlines still missing: </li><li> is one line break, not two.
        wanted = len(text) - len(text.lstrip("\n"))
        have = 0
        for part in reversed(self.parts):
            have += len(part) - len(part.rstrip("\n"))
            if part.strip("\n"):
                break
        text = "\n" * max(0, wanted - have) + text.lstrip("\n")
        if text:
            self.parts.append(text)

    def text(self) -> str:
        lines = [line.rstrip() for line in "".join(self.parts).split("\n")]
        # A heading or list item with no text is no line at all.
        lines = [line for line in lines if not re.fullmatch(r"#{1,6}|-", line)]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _html(text: str) -> tuple[str, str, str, list[str]]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    url = parser.canonical or parser.og_url
    h1 = parser.h1 or _one_line("".join(parser._h1_parts or []))
    return parser.title or h1, parser.text(), url, _tags(parser.keywords)


_READERS = {"markdown": _markdown, "text": _text, "html": _html}


# --- Parsing a file ------------------------------------------------------------------


def parse_file(name: str, data: bytes) -> Parsed | Rejected:
    """The article in one file, or why it cannot be one. Never raises on `data`."""
    name = clean_name(name)
    suffix = PurePosixPath(name).suffix.lower()
    kind = TYPES.get(suffix)
    if kind is None:
        shown = f"type {suffix}" if suffix else "file type (no extension)"
        return Rejected(name, f"unsupported {shown}; use .md, .txt or .html")
    too_large = check_size(name, len(data))
    if too_large is not None:
        return too_large
    if _looks_binary(data):
        return Rejected(name, "binary file")
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        return Rejected(
            name, f"not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}; save it as UTF-8)"
        )
    try:
        title, body, url, tags = _READERS[kind](clean_text(text))
    except Exception:
        # html.parser has raised on malformed declarations in some Python versions.
        logger.warning("could not parse %s", name, exc_info=True)
        return Rejected(name, f"could not be read as {kind}")
    return _article(name, title, body, url.strip(), tags)


def _article(name: str, title: str, body: str, url: str, tags: list[str]) -> Parsed | Rejected:
    body = clean_text(body).strip("\n")
    if len(body) > MAX_BODY_CHARS:
        return Rejected(
            name, f"text too long ({len(body):,} characters; the limit is {MAX_BODY_CHARS:,})"
        )
    if not body.strip() or not chunk(body):
        return Rejected(name, "no text")
    if url:
        problem = _url_problem(url)
        if problem is not None:
            return Rejected(name, problem)
    title = _one_line(title) or _title_from_name(name)
    if len(title) > MAX_TITLE:
        title = title[: MAX_TITLE - 1].rstrip() + "…"
    return Parsed(title, body, url, tags, _fit_source(url or name), name)


# --- Storing ---------------------------------------------------------------------------


def import_parsed(
    site: Site, items: Iterable[Parsed | Rejected], *, published: bool = True
) -> ImportReport:
    """Store each parsed file as an article of `site`; report every file's outcome."""
    report = ImportReport()
    first_with: dict[str, str] = {}
    for item in items:
        if isinstance(item, Rejected):
            report.rejected.append(item)
            continue
        # Two files of one import with one source would overwrite each other.
        if item.source in first_with:
            reason = f"same url or name as {first_with[item.source]}; only that one was imported"
            report.rejected.append(Rejected(item.name, reason))
            continue
        first_with[item.source] = item.name
        try:
            _, outcome = article_upsert(
                site=site,
                source=item.source,
                title=item.title,
                body=item.body,
                url=item.url,
                tags=item.tags,
                published=published,
            )
        except DatabaseError:
            logger.exception("could not save %s", item.name)
            report.rejected.append(Rejected(item.name, "could not be saved (see the server log)"))
            continue
        getattr(report, outcome).append(item.name)
    return report


def import_files(
    site: Site, files: Iterable[tuple[str, bytes]], *, published: bool = True
) -> ImportReport:
    """Import (name, content) pairs; a name's extension says how to read it."""
    parsed = (parse_file(name, data) for name, data in files)
    return import_parsed(site, parsed, published=published)


def import_path(site: Site, path: Path, *, published: bool = True) -> ImportReport:
    """Import a file, or a folder's files recursively in name order.

    Hidden files and folders are skipped, symlinks are followed only to files inside
    the folder, and a folder of more than MAX_FILES files raises TooManyFiles before
    anything is imported.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        entries = _folder_entries(path)
    else:
        entries = [(clean_name(path.name), path)]
    return import_parsed(site, _read_entries(entries), published=published)


def _read_entries(entries: list[tuple[str, Path] | Rejected]) -> Iterator[Parsed | Rejected]:
    # One file in memory at a time.
    for entry in entries:
        yield entry if isinstance(entry, Rejected) else _read_file(*entry)


def _read_file(name: str, path: Path) -> Parsed | Rejected:
    if PurePosixPath(name).suffix.lower() not in TYPES:
        return parse_file(name, b"")  # the unsupported-type rejection, without a read
    try:
        info = path.stat()
        # A FIFO or device would block or never end.
        if not stat.S_ISREG(info.st_mode):
            return Rejected(name, "not a regular file")
        too_large = check_size(name, info.st_size)
        if too_large is not None:
            return too_large
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return Rejected(name, f"could not be read ({exc.strerror or exc.__class__.__name__})")
    return parse_file(name, data)


def _folder_entries(folder: Path) -> list[tuple[str, Path] | Rejected]:
    root = folder.resolve()
    found: list[tuple[str, Path] | Rejected] = []

    def relative(path: Path) -> str:
        return clean_name(path.relative_to(root).as_posix())

    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else root
        found.append(Rejected(relative(where) if where != root else ".", "folder not readable"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            sub = here / name
            if sub.is_symlink():
                # Never descended into (no loops); one pointing inside the folder has
                # its files imported from where they really are.
                if not _inside(sub, root):
                    found.append(Rejected(relative(sub), "symlink to outside the folder"))
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            if name.startswith("."):
                continue
            file = here / name
            if file.is_symlink() and not _inside(file, root):
                found.append(Rejected(relative(file), "symlink to outside the folder"))
            else:
                found.append((relative(file), file))
            if len(found) > MAX_FILES:
                raise TooManyFiles(
                    f"{folder} holds more than {MAX_FILES:,} files; import it in parts"
                )
    found.sort(key=lambda entry: entry.name if isinstance(entry, Rejected) else entry[0])
    return found


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False
