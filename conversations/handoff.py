"""When a conversation should go to a person, and why: pure decisions, no writes.

services.conversation_handoff carries a decision out; replies.py asks these
functions before the model is called (about the visitor's message) and after it
answered (about the answer).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from conversations.models import Ticket
from conversations.moderation.verdict import Verdict

# Reasons, stored on the message, the status change and the ticket.
VISITOR_ASKED = "visitor asked for a person"
MODEL_CANNOT_HELP = "the assistant could not help"
TWO_FAILURES = "two failed replies in a row"
REPEATED_QUESTION = "the visitor asked the same question three times"
PROMPT_LEAK = "the answer revealed the system prompt"
MODERATION_UNAVAILABLE = "moderation was unavailable"
NO_KNOWLEDGE = "no knowledge"


@dataclass(frozen=True)
class Decision:
    reason: str = ""
    priority: int = Ticket.Priority.NORMAL

    @property
    def requested(self) -> bool:
        return bool(self.reason)


NONE = Decision()


def moderation_decision(verdict: Verdict, *, of: str) -> Decision:
    """A flagged text goes to a person; self-harm and threats are urgent."""
    if not verdict.flagged:
        return NONE
    categories = ", ".join(verdict.categories) or "flagged"
    priority = Ticket.Priority.URGENT if verdict.urgent else Ticket.Priority.HIGH
    return Decision(f"moderation flagged {of}: {categories}"[:200], priority)


# "talk to a human", "can I speak with a real person", "connect me to an agent",
# "transfer me to a representative": a verb of asking, then (within a few words) a
# person. Past tenses ("I talked to an agent yesterday") are not requests.
_PERSON = (
    r"(?:human(?:\s+being)?|person|agent|representative|rep|operator|staff(?:\s+member)?"
    r"|someone\s+(?:real|from\s+(?:your|the)\s+(?:team|company|support))"
    r"|somebody\s+real|customer\s+(?:service|support)|support\s+team|live\s+support)"
)
_ASK_PATTERNS = [
    re.compile(
        r"\b(?:talk|speak|chat|write)\s+(?:\w+\s+){0,2}(?:to|with)\s+"
        r"(?:a|an|the|your|some|one\s+of\s+your|real|live|actual|\s)*" + _PERSON + r"\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:connect|transfer|put|pass|forward|escalate|hand)\s+(?:me|this|it|us)\s+"
        r"(?:\w+\s+){0,2}(?:to|with|through\s+to)\s+"
        r"(?:a|an|the|your|some|real|live|actual|\s)*" + _PERSON + r"\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:get|need|want|give)\s+(?:me\s+)?(?:a|an|to\s+speak\s+to\s+a)?\s*"
        r"(?:real|live|actual)\s+(?:human|person|agent)\b",
        re.IGNORECASE,
    ),
    # The whole message is the request: "human please", "agent!", "representative".
    re.compile(
        r"^\W*(?:a\s+)?(?:real\s+|live\s+)?(?:human|agent|representative|operator|person)"
        r"(?:\s+(?:please|pls|now))*\W*$",
        re.IGNORECASE,
    ),
]


def visitor_asks_for_person(text: str) -> bool:
    return any(pattern.search(text) for pattern in _ASK_PATTERNS)


def _topic_pattern(topic: str) -> re.Pattern[str]:
    words = [re.escape(word) for word in topic.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def matching_topic(text: str, topics: list[str]) -> str | None:
    """The first site-configured topic the text mentions (whole words, any case)."""
    for topic in topics:
        if topic.strip() and _topic_pattern(topic.strip()).search(text):
            return topic.strip()
    return None


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


# Short replies ("yes", "ok thanks") repeat naturally; only real questions count.
_MIN_QUESTION_CHARS = 10


def is_repeated_question(text: str, earlier: list[str], *, times: int = 3) -> bool:
    """The visitor has now asked (nearly) the same thing `times` times."""
    current = _normalised(text)
    if len(current) < _MIN_QUESTION_CHARS:
        return False
    return sum(1 for other in earlier if _same_question(_normalised(other), current)) + 1 >= times


def _same_question(a: str, b: str) -> bool:
    # Numbers must match exactly: "order 1182" and "order 1183" are two questions,
    # though the strings differ by one character.
    if re.findall(r"\d+", a) != re.findall(r"\d+", b):
        return False
    return a == b or difflib.SequenceMatcher(None, a, b).ratio() >= 0.9


def decide_for_visitor_message(
    *, text: str, verdict: Verdict, topics: list[str], earlier_questions: list[str]
) -> Decision:
    """Whether a visitor's message goes to a person before the model sees it."""
    flagged = moderation_decision(verdict, of="the visitor's message")
    if flagged.requested:
        return flagged
    if visitor_asks_for_person(text):
        return Decision(VISITOR_ASKED)
    topic = matching_topic(text, topics)
    if topic is not None:
        return Decision(f"handoff topic: {topic}"[:200])
    if is_repeated_question(text, earlier_questions):
        return Decision(REPEATED_QUESTION)
    return NONE


# --- The model's own signal -------------------------------------------------------

# The system prompt asks for this marker where the provider offers no tools.
MARKER = "[[handoff]]"
HANDOFF_TOOL = {
    "type": "function",
    "function": {
        "name": "handoff_to_human",
        "description": (
            "Hand the conversation to a human support agent when you cannot help, "
            "do not know the answer, or the visitor needs a person."
        ),
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why, in a few words."}},
            "required": [],
        },
    },
}
_MARKER_RE = re.compile(r"\s*\[\[\s*handoff\s*\]\]", re.IGNORECASE)


class MarkerFilter:
    """Strips the handoff marker from a stream before visitors see it.

    Text that might be the start of a marker split across pieces is held back
    until the next piece shows whether it is one.
    """

    def __init__(self) -> None:
        self.found = False
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        text, count = _MARKER_RE.subn("", text)
        self.found = self.found or count > 0
        cut = _possible_marker_start(text)
        self._held = text[cut:]
        return text[:cut]

    def finish(self) -> str:
        text, self._held = self._held, ""
        return text


def _possible_marker_start(text: str) -> int:
    """Where a trailing prefix of the marker (spaces allowed) begins, or len(text)."""
    start = text.rfind("[")
    if start == -1 or len(text) - start > 24:
        return len(text)
    if start > 0 and text[start - 1] == "[":
        start -= 1
    tail = re.sub(r"\s+", "", text[start:]).lower()
    if MARKER.startswith(tail):
        # Whitespace before a marker is stripped with it, so hold that too.
        while start > 0 and text[start - 1].isspace():
            start -= 1
        return start
    return len(text)


def strip_marker(text: str) -> tuple[str, bool]:
    stripped, count = _MARKER_RE.subn("", text)
    return stripped, count > 0
