"""Articles cut into chunks that retrieval ranks and the prompt quotes.

A chunk stays within one section (a Markdown heading and what follows it), so it
carries that heading, and is at most MAX_CHARS long; long sections are cut at
paragraph, then sentence, then word boundaries, each chunk repeating the last
OVERLAP_CHARS of the one before, so a fact on a boundary is whole in one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CHARS = 900
OVERLAP_CHARS = 150

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Piece:
    heading: str
    text: str


def sections(body: str) -> list[tuple[str, str]]:
    """(heading, text) per Markdown section; text before the first heading has ''."""
    found = list(_HEADING.finditer(body))
    out: list[tuple[str, str]] = []
    start, heading = 0, ""
    for match in found:
        out.append((heading, body[start : match.start()]))
        heading, start = match.group(2).strip(), match.end()
    out.append((heading, body[start:]))
    return [(h, t.strip()) for h, t in out if t.strip() or h]


def chunk(body: str, *, max_chars: int = MAX_CHARS, overlap: int = OVERLAP_CHARS) -> list[Piece]:
    pieces: list[Piece] = []
    for heading, text in sections(body):
        if not text:
            continue
        for part in _split(_tidy(text), max_chars, overlap):
            pieces.append(Piece(heading, part))
    return pieces


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _split(text: str, max_chars: int, overlap: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + max_chars)
        if end < len(text):
            end = _boundary(text, start, end)
        chunks.append(text[start:end].strip())
        if end >= len(text):
            break
        # The next chunk starts `overlap` characters back, at a word start.
        back = max(start + 1, end - overlap)
        space = text.find(" ", back, end)
        start = space + 1 if space != -1 else back
    return [c for c in chunks if c]


def _boundary(text: str, start: int, end: int) -> int:
    """The best cut at or before `end`: paragraph, sentence, then word."""
    floor = start + (end - start) // 2
    for pattern in ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " "):
        cut = text.rfind(pattern, floor, end)
        if cut != -1:
            return cut + len(pattern)
    return end
