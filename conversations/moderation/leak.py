"""Prompt leaks: an answer that carries the site's canary or recites its system prompt."""

from __future__ import annotations

import re

# A run this many words long copied from the system prompt counts as reciting it;
# short prompts are compared whole (but at least _MIN_RUN words, so that a
# one-line prompt's "you are a helpful assistant" is not a leak).
_RUN_WORDS = 12
_MIN_RUN = 8

_WORD = re.compile(r"\w+")
_ALNUM = re.compile(r"[0-9a-z]")

# What a leaked canary or recited prompt becomes in text kept for staff.
MASK = "[withheld: system prompt]"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


class LeakDetector:
    def __init__(self, *, system_prompt: str, canary: str) -> None:
        self.canary = canary.casefold()
        # The canary also caught with its separators dropped ("sb canary 1f2e...").
        self._canary_core = re.sub(r"[^0-9a-z]", "", self.canary)
        words = _words(system_prompt.replace(canary, " "))
        self.run = min(_RUN_WORDS, len(words))
        self._runs: set[tuple[str, ...]] = set()
        if self.run >= _MIN_RUN:
            self._runs = {tuple(words[i : i + self.run]) for i in range(len(words) - self.run + 1)}

    def canary_leaked(self, text: str) -> bool:
        folded = text.casefold()
        if self.canary and self.canary in folded:
            return True
        return len(self._canary_core) >= 12 and self._canary_core in re.sub(
            r"[^0-9a-z]", "", folded
        )

    def leaked(self, text: str) -> bool:
        if self.canary_leaked(text):
            return True
        if not self._runs:
            return False
        words = _words(text)
        return any(
            tuple(words[i : i + self.run]) in self._runs for i in range(len(words) - self.run + 1)
        )

    def redact(self, text: str) -> str:
        """`text` with the canary (in any case, with or without separators) and every
        recited run of the prompt replaced by MASK.

        A withdrawn answer is kept for staff, who are not all allowed to see the
        prompt (only superusers edit sites), and the canary must appear nowhere but
        in the prompt sent to the model, so that seeing it anywhere means a leak.
        """
        spans: list[tuple[int, int]] = []
        if self.canary:
            spans += [m.span() for m in re.finditer(re.escape(self.canary), text, re.IGNORECASE)]
        if len(self._canary_core) >= 12:
            # The alphanumerics of the text, each with the index of the character it came from.
            core, origin = [], []
            for index, char in enumerate(text):
                for folded in char.casefold():
                    if _ALNUM.match(folded):
                        core.append(folded)
                        origin.append(index)
            joined = "".join(core)
            start = joined.find(self._canary_core)
            while start != -1:
                end = start + len(self._canary_core)
                spans.append((origin[start], origin[end - 1] + 1))
                start = joined.find(self._canary_core, end)
        if self._runs:
            words = list(_WORD.finditer(text))
            folded = [word.group().casefold() for word in words]
            for i in range(len(words) - self.run + 1):
                if tuple(folded[i : i + self.run]) in self._runs:
                    spans.append((words[i].start(), words[i + self.run - 1].end()))
        if not spans:
            return text
        out, position = [], 0
        for start, end in sorted(spans):
            if start < position:  # overlaps the span before: extend it
                position = max(position, end)
                continue
            out += [text[position:start], MASK]
            position = end
        out.append(text[position:])
        return "".join(out)


class CanaryGuard:
    """Holds back streamed text that could be the start of the canary, and says when
    the canary is complete, so no delta ever carries it, whole or split in two.

    The held text is only ever a few characters (a suffix of what arrived whose
    letters and digits begin the canary's), released as soon as the next piece shows
    it is not the canary.
    """

    def __init__(self, detector: LeakDetector) -> None:
        self.core = detector._canary_core
        self.canary = detector.canary
        self.text = ""
        # The letters and digits of `text`, case-folded, each with its index in `text`.
        self._core: list[str] = []
        self._origin: list[int] = []

    def feed(self, piece: str) -> bool:
        """Add a piece; True when the text now holds the canary."""
        start = len(self.text)
        self.text += piece
        for offset, char in enumerate(piece):
            for folded in char.casefold():
                if _ALNUM.match(folded):
                    self._core.append(folded)
                    self._origin.append(start + offset)
        tail = self.text[-(len(piece) + len(self.canary)) :]
        if self.canary and self.canary in tail.casefold():
            return True
        if len(self.core) < 12:
            return False
        recent = "".join(self._core[-(len(piece) + len(self.core)) :])
        return self.core in recent

    def safe_end(self) -> int:
        """How much of the text may be shown: up to where a canary could be starting."""
        if len(self.core) < 12:
            return len(self.text)
        core = "".join(self._core[-(len(self.core) - 1) :])
        for size in range(min(len(core), len(self.core) - 1), 0, -1):
            if core.endswith(self.core[:size]):
                return self._origin[len(self._core) - size]
        return len(self.text)
