"""Prompt leaks: an answer that carries the site's canary or recites its system prompt."""

from __future__ import annotations

import re

# A run this many words long copied from the system prompt counts as reciting it;
# short prompts are compared whole (but at least _MIN_RUN words, so that a
# one-line prompt's "you are a helpful assistant" is not a leak).
_RUN_WORDS = 12
_MIN_RUN = 8

_WORD = re.compile(r"\w+")


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

    def leaked(self, text: str) -> bool:
        folded = text.casefold()
        if self.canary and self.canary in folded:
            return True
        if len(self._canary_core) >= 12 and self._canary_core in re.sub(r"[^0-9a-z]", "", folded):
            return True
        if not self._runs:
            return False
        words = _words(text)
        return any(
            tuple(words[i : i + self.run]) in self._runs for i in range(len(words) - self.run + 1)
        )
