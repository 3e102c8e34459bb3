"""The pure parts of moderation and handoff: the streaming gate, the marker filter,
the prompt-leak detector and the visitor-side triggers (no database, no network)."""

from __future__ import annotations

import asyncio

import pytest

from conversations import handoff
from conversations.moderation.gate import AnswerChecker, FreeRelease, Gate
from conversations.moderation.leak import LeakDetector
from conversations.moderation.verdict import (
    FLAGGED,
    PASSED,
    ModerationUnavailable,
    Verdict,
)


class WordModerator:
    """Flags any text containing `bad`; records what it was asked."""

    name = "words"

    def __init__(self, bad: str = "BAD", fail: bool = False) -> None:
        self.bad = bad
        self.fail = fail
        self.seen: list[str] = []

    async def check(self, text: str) -> Verdict:
        self.seen.append(text)
        if self.fail:
            raise ModerationUnavailable("server_error", "HTTP 500")
        if self.bad in text:
            return Verdict(FLAGGED, ("harassment",), {"harassment": 1.0}, provider="words")
        return Verdict(PASSED, provider="words")


def gate(moderator, *, fail_open=False, window=60, context=400, prompt="", canary="sb-x"):
    leak = LeakDetector(system_prompt=prompt, canary=canary)
    return Gate(
        AnswerChecker(moderator, leak),
        fail_open=fail_open,
        window_chars=window,
        context_chars=context,
    )


def stream(release: FreeRelease, pieces: list[str]) -> list[str]:
    async def run() -> list[str]:
        out = [await release.feed(piece) for piece in pieces]
        out.append(await release.finish())
        return [text for text in out if text]

    return asyncio.run(run())


def chars(text: str) -> list[str]:
    return list(text)


def test_the_gate_releases_whole_sentences_once_checked():
    moderator = WordModerator()
    text = "Your order shipped today. It arrives on Friday. Thanks for waiting!"
    released = stream(gate(moderator), chars(text))
    assert "".join(released) == text
    assert released == [
        "Your order shipped today. ",
        "It arrives on Friday. ",
        "Thanks for waiting!",
    ]
    # Each window is checked with what came before it.
    assert moderator.seen[1] == "Your order shipped today. It arrives on Friday. "


def test_the_gate_stops_at_a_flagged_window_and_never_releases_it():
    moderator = WordModerator()
    release = gate(moderator)
    released = stream(release, chars("This first part is fine. This part is BAD news. More after."))
    assert released == ["This first part is fine. "]
    assert release.stopped is not None and release.stopped.code == "moderation"
    assert "BAD" in release.model_text, "the withheld text is kept for staff"


def test_the_gate_cuts_a_long_sentence_at_a_space_within_the_limit():
    released = stream(gate(WordModerator(), window=40), chars("word " * 30))
    assert all(len(window) <= 40 for window in released)
    assert "".join(released) == "word " * 30


def test_the_gate_catches_a_flag_that_spans_two_windows():
    moderator = WordModerator(bad="kill you")
    released = stream(
        gate(moderator, window=40), chars("I will find you and I will kill " + "you now.")
    )
    assert "kill you" not in "".join(released)


def test_a_failing_moderator_stops_the_stream_unless_the_site_fails_open():
    closed = gate(WordModerator(fail=True))
    assert stream(closed, chars("Hello there, how are you today?")) == []
    assert closed.stopped.code == "moderation_unavailable"
    assert closed.stopped.verdict.status == "unchecked"

    opened = gate(WordModerator(fail=True), fail_open=True)
    assert "".join(stream(opened, chars("Hello there, how are you today?"))) == (
        "Hello there, how are you today?"
    )
    assert opened.stopped is None


def test_the_gate_stops_a_canary_leak():
    release = gate(WordModerator(), canary="sb-canary-0123456789abcdef")
    stream(release, chars("Sure. The code is sb-canary-0123456789abcdef, enjoy."))
    assert release.stopped is not None and release.stopped.code == "prompt_leak"


def test_the_leak_detector_catches_a_recited_prompt_but_not_common_phrases():
    prompt = (
        "You are the support assistant of Acme. Offer the discount code TEN only to "
        "customers whose parcel arrived damaged, and never mention it otherwise."
    )
    detector = LeakDetector(system_prompt=prompt, canary="sb-canary-1")
    assert detector.leaked(
        "Rules: offer the discount code TEN only to customers whose parcel arrived damaged!"
    )
    assert not detector.leaked("I am the support assistant of Acme, how can I help?")
    assert detector.leaked("my code is SB-CANARY-1")
    short = LeakDetector(system_prompt="Be helpful.", canary="sb-canary-2")
    assert not short.leaked("I will be helpful.")


@pytest.mark.parametrize(
    "pieces",
    [
        ["Sorry, I can't help. [[handoff]]"],
        ["Sorry, I can't help.", " [[", "hand", "off", "]]"],
        ["Sorry, I can't help. [", "[HANDOFF]]"],
        ["Sorry, I can't help.", " [[ handoff ]]"],
    ],
)
def test_the_marker_is_stripped_however_it_is_split(pieces):
    release = FreeRelease()
    assert "".join(stream(release, pieces)) == "Sorry, I can't help."
    assert release.marker.found


def test_text_that_only_looks_like_a_marker_start_is_released():
    release = FreeRelease()
    assert "".join(stream(release, ["See note [", "1] and [[", "links]]."])) == (
        "See note [1] and [[links]]."
    )
    assert not release.marker.found


@pytest.mark.parametrize(
    "text",
    [
        "Can I talk to a human?",
        "i want to speak to someone from your team",
        "please connect me with a live agent",
        "transfer me to customer service",
        "Human please!",
        "I need a real person",
    ],
)
def test_it_hears_a_request_for_a_person(text):
    assert handoff.visitor_asks_for_person(text)


@pytest.mark.parametrize(
    "text",
    [
        "Is this a human?",
        "I talked to an agent yesterday",
        "My travel agent booked this",
        "How do I change the user agent?",
        "Can you transfer the money to another person?",
        "Who is the person responsible for shipping?",
    ],
)
def test_it_does_not_mistake_ordinary_sentences_for_a_request(text):
    assert not handoff.visitor_asks_for_person(text)


def test_topics_match_whole_words_in_any_case():
    assert handoff.matching_topic("I want a REFUND now", ["refund"]) == "refund"
    assert handoff.matching_topic("refunded already?", ["refund"]) is None
    assert handoff.matching_topic("thinking of legal   action", ["legal action"]) == "legal action"


def test_a_question_counts_as_repeated_on_its_third_time():
    earlier = ["Why was I charged twice?", "thanks"]
    assert not handoff.is_repeated_question("why was i charged twice", earlier)
    earlier.append("WHY was I charged twice??")
    assert handoff.is_repeated_question("Why was I charged twice", earlier)
    assert not handoff.is_repeated_question("ok", ["ok", "ok"])


def test_questions_that_differ_only_in_a_number_are_not_repeats():
    earlier = ["Where is order 1182?", "Where is order 1183?"]
    assert not handoff.is_repeated_question("Where is order 1184?", earlier)
    assert not handoff.is_repeated_question("message 3", ["message 1", "message 2"])
