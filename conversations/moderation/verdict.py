"""What a moderator says about one text, whichever provider said it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

PASSED = "passed"
FLAGGED = "flagged"
UNCHECKED = "unchecked"

# Categories (OpenAI's names where one exists) whose handoff is urgent: a person
# must look at once, not when the queue reaches them.
URGENT_PREFIXES = ("self-harm", "violence", "harassment/threatening", "hate/threatening")


@dataclass(frozen=True)
class Verdict:
    status: str  # PASSED, FLAGGED or UNCHECKED
    categories: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    provider: str = ""
    latency_ms: int = 0
    # Why the text could not be checked (UNCHECKED only).
    detail: str = ""

    @property
    def flagged(self) -> bool:
        return self.status == FLAGGED

    @property
    def urgent(self) -> bool:
        return self.flagged and any(c.startswith(URGENT_PREFIXES) for c in self.categories)

    @property
    def self_harm(self) -> bool:
        return self.flagged and any(c.startswith("self-harm") for c in self.categories)


class ModerationUnavailable(Exception):
    """The moderator could not give a verdict (timeout, 5xx, broken answer)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Moderator(Protocol):
    name: str

    async def check(self, text: str) -> Verdict:
        """A verdict on `text`; raises ModerationUnavailable when none can be had."""
        ...
