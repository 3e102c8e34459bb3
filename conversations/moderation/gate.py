"""What of a streaming answer visitors may see, and when.

`FreeRelease` passes the model's text straight through (moderation mode "after":
the whole answer is checked at the end). `Gate` (mode "gate") holds the text back
window by window -- a sentence, or at most `window_chars` -- and releases a window
only once it has passed moderation together with the text released before it. A
window that fails stops the stream: visitors never receive it. Both strip the
handoff marker first, so the marker is never shown either.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from conversations.handoff import MarkerFilter
from conversations.moderation.leak import CanaryGuard, LeakDetector
from conversations.moderation.verdict import (
    FLAGGED,
    UNCHECKED,
    ModerationUnavailable,
    Moderator,
    Verdict,
)

# Stored as the withdrawn answer's error_code and sent as the withdrawn event's category.
FLAGGED_CODE = "moderation"
LEAK_CODE = "prompt_leak"
UNCHECKED_CODE = "moderation_unavailable"

LEAK_CATEGORY = "prompt-leak"


@dataclass(frozen=True)
class Stop:
    """Why a stream was stopped before its end."""

    verdict: Verdict
    code: str  # FLAGGED_CODE, LEAK_CODE or UNCHECKED_CODE


class AnswerChecker:
    """The site's moderator plus (for answers) its prompt-leak detector, as one verdict."""

    def __init__(self, moderator: Moderator, leak: LeakDetector | None = None) -> None:
        self.moderator = moderator
        self.leak = leak

    async def check(self, text: str) -> Verdict:
        """FLAGGED, PASSED or (the moderator failed) UNCHECKED; never raises."""
        started = time.monotonic()
        if self.leak is not None and self.leak.leaked(text):
            return Verdict(
                FLAGGED,
                (LEAK_CATEGORY,),
                {LEAK_CATEGORY: 1.0},
                provider="leak-detector",
                latency_ms=round((time.monotonic() - started) * 1000),
            )
        try:
            return await self.moderator.check(text)
        except ModerationUnavailable as error:
            return Verdict(
                UNCHECKED,
                provider=self.moderator.name,
                latency_ms=round((time.monotonic() - started) * 1000),
                detail=f"{error.code}: {error}"[:200],
            )


def stop_for(verdict: Verdict, *, fail_open: bool) -> Stop | None:
    """Whether a verdict on answer text stops (or withdraws) the answer."""
    if verdict.flagged:
        code = LEAK_CODE if LEAK_CATEGORY in verdict.categories else FLAGGED_CODE
        return Stop(verdict, code)
    if verdict.status == UNCHECKED and not fail_open:
        return Stop(verdict, UNCHECKED_CODE)
    return None


class FreeRelease:
    """Everything at once (minus the handoff marker); checked only at the end.

    Except the prompt canary, with a `leak` detector: it must never reach a visitor,
    and spotting it costs nothing, so text that could be the start of it is held
    back until the next piece says otherwise, and the canary itself stops the stream.
    """

    def __init__(self, leak: LeakDetector | None = None) -> None:
        self.marker = MarkerFilter()
        self.stopped: Stop | None = None
        # Everything the model said, marker removed, shown or not.
        self.model_text = ""
        self.checks = 0
        self._guard = CanaryGuard(leak) if leak is not None and leak.canary else None
        self._shown = 0  # of the guard's text

    async def feed(self, piece: str) -> str:
        text = self.marker.feed(piece)
        self.model_text += text
        return self._guarded(text, final=False)

    async def finish(self) -> str:
        text = self.marker.finish()
        self.model_text += text
        return self._guarded(text, final=True)

    def _guarded(self, text: str, *, final: bool) -> str:
        if self.stopped is not None:
            return ""
        if self._guard is None:
            return text
        if self._guard.feed(text):
            self.stopped = Stop(
                Verdict(FLAGGED, (LEAK_CATEGORY,), {LEAK_CATEGORY: 1.0}, provider="leak-detector"),
                LEAK_CODE,
            )
            return ""
        end = len(self._guard.text) if final else self._guard.safe_end()
        out = self._guard.text[self._shown : end]
        self._shown = max(self._shown, end)
        return out


# A window ends after a sentence's end followed by a space or at a line break.
_BOUNDARY = re.compile(r"[.!?\u2026][\"')\]]*\s+|\n")


class Gate(FreeRelease):
    def __init__(
        self,
        checker: AnswerChecker,
        *,
        fail_open: bool,
        window_chars: int,
        context_chars: int,
        min_window_chars: int = 20,
    ) -> None:
        # The guard also keeps a canary from being cut in two by a window's end.
        super().__init__(checker.leak)
        self.checker = checker
        self.fail_open = fail_open
        self.window_chars = window_chars
        self.context_chars = context_chars
        self.min_window_chars = min(min_window_chars, window_chars)
        self.released = ""
        self._buffer = ""

    async def feed(self, piece: str) -> str:
        if self.stopped is not None:
            return ""
        self._buffer += await super().feed(piece)
        out = []
        while self.stopped is None and (cut := self._window_end()) is not None:
            window, self._buffer = self._buffer[:cut], self._buffer[cut:]
            out.append(await self._release(window))
        return "".join(out)

    async def finish(self) -> str:
        if self.stopped is not None:
            return ""
        self._buffer += await super().finish()
        if self.stopped is not None:  # the canary guard stopped it
            return ""
        window, self._buffer = self._buffer, ""
        return await self._release(window) if window else ""

    def _window_end(self) -> int | None:
        for match in _BOUNDARY.finditer(self._buffer, self.min_window_chars):
            if match.end() <= self.window_chars:
                return match.end()
            break
        if len(self._buffer) < self.window_chars:
            return None
        # No sentence end within the limit: cut at the last space, or hard.
        space = self._buffer.rfind(" ", self.min_window_chars, self.window_chars)
        return space + 1 if space != -1 else self.window_chars

    async def _release(self, window: str) -> str:
        context = self.released[-self.context_chars :] if self.context_chars else ""
        self.checks += 1
        verdict = await self.checker.check(context + window)
        self.stopped = stop_for(verdict, fail_open=self.fail_open)
        if self.stopped is not None:
            return ""
        self.released += window
        return window
