"""The offline moderator: its numbers on the labelled set (printed with the normal
pytest output), the support talk it must let through, the secrets it must catch,
its equivalence with profanity_check, and its worst-case time. No database."""

from __future__ import annotations

import asyncio
import time

import pytest
from profanity_check import predict_prob

from conversations.moderation import profanity, rules
from conversations.moderation.offline import (
    ABUSE_THRESHOLD,
    CATEGORIES,
    OfflineModerator,
    classify,
)
from conversations.moderation.profanity import ProfanityModelError, abuse_probability
from conversations.moderation.verdict import FLAGGED, PASSED, ModerationUnavailable
from tests.moderation_cases import CASES

PRECISION_FLOOR = 0.9
RECALL_FLOOR = 0.85
ORDINARY_FLAGGED_CEILING = 0.02


def flagged(text: str) -> set[str]:
    return set(classify(text)[0])


# --- the labelled set -------------------------------------------------------------------


def measure() -> tuple[dict[str, dict[str, float]], int, int, list[str]]:
    counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in CATEGORIES}
    ordinary = ordinary_flagged = 0
    wrong = []
    for text, expected in CASES:
        got = flagged(text)
        for category in CATEGORIES:
            if category in got and category in expected:
                counts[category]["tp"] += 1
            elif category in got:
                counts[category]["fp"] += 1
            elif category in expected:
                counts[category]["fn"] += 1
        if not expected:
            ordinary += 1
            ordinary_flagged += bool(got)
        if got != expected:
            wrong.append(f"{text!r}: expected {sorted(expected)}, got {sorted(got)}")
    metrics = {}
    for category, c in counts.items():
        flagged_count = c["tp"] + c["fp"]
        labelled = c["tp"] + c["fn"]
        metrics[category] = {
            "labelled": labelled,
            "flagged": flagged_count,
            "precision": c["tp"] / flagged_count if flagged_count else 1.0,
            "recall": c["tp"] / labelled if labelled else 1.0,
        }
    return metrics, ordinary, ordinary_flagged, wrong


def test_the_labelled_set_meets_its_floors(capsys):
    metrics, ordinary, ordinary_flagged, wrong = measure()
    lines = [
        "",
        f"offline moderator on {len(CASES)} labelled messages "
        f"(harassment threshold {ABUSE_THRESHOLD})",
        f"{'category':<15}{'labelled':>9}{'flagged':>9}{'precision':>11}{'recall':>8}",
    ]
    for category, m in metrics.items():
        lines.append(
            f"{category:<15}{m['labelled']:>9}{m['flagged']:>9}"
            f"{m['precision']:>11.3f}{m['recall']:>8.3f}"
        )
    lines.append(
        f"ordinary messages flagged: {ordinary_flagged}/{ordinary} "
        f"({ordinary_flagged / ordinary:.1%})"
    )
    lines.extend(f"  miss or false flag: {line}" for line in wrong)
    with capsys.disabled():
        print("\n".join(lines))

    for category, m in metrics.items():
        assert m["labelled"] > 0, category
        assert m["precision"] >= PRECISION_FLOOR, (category, m)
        assert m["recall"] >= RECALL_FLOOR, (category, m)
    assert ordinary_flagged / ordinary <= ORDINARY_FLAGGED_CEILING


def test_the_labelled_set_has_enough_of_each_kind():
    def count(category: str) -> int:
        return sum(category in expected for _, expected in CASES)

    assert len(CASES) >= 220
    assert sum(not expected for _, expected in CASES) >= 100
    assert count("harassment") >= 25
    assert count("self-harm") >= 25
    assert count("violence") >= 20
    assert count("hate") >= 15
    assert count("sexual/minors") >= 10
    assert count("secrets") >= 20
    assert {c for _, expected in CASES for c in expected} <= set(CATEGORIES)


# --- support talk that must pass --------------------------------------------------------


def test_it_does_not_flag_kill_the_process():
    assert flagged("How do I kill the process? The app froze.") == set()
    assert flagged("how do I kill the app") == set()


@pytest.mark.parametrize(
    "text",
    [
        "Can you shoot me an email with the invoice?",
        "I'll shoot you an email tomorrow.",
        "This price is killing me.",
        "The update killed my battery.",
        "My order is dead on arrival.",
        "I'm dying to try it!",
        "How do I execute the script?",
        "Should I cut the cable tie first?",
        "The call dropped, I had to hang up.",
        "It wouldn't kill you to answer my emails.",
        "The launch was a bomb, congratulations.",
        "Do you ship bath bombs to Canada?",
        "I hate waiting on hold.",
        "Can I add my kid's account to the family plan?",
        "Do you have these in children's sizes?",
        "Does this game have sexual content? It's for my 10 year old.",
        "Is the Suicide Squad Blu-ray in stock?",
    ],
)
def test_it_does_not_flag_support_talk_with_trap_words(text):
    assert flagged(text) == set()


def test_it_tells_a_threat_from_an_idiom():
    assert "violence" in flagged("I will kill you.")
    assert "violence" in flagged("I'm going to shoot up your office.")
    assert "violence" in flagged("I know where you live.")
    assert "violence" not in flagged("I'm going to kill it at the presentation!")
    assert "violence" not in flagged("I'd kill for a decent tracking page.")


def test_it_tells_self_harm_from_an_accident():
    assert "self-harm" in flagged("I cut myself again last night.")
    assert "self-harm" not in flagged("I cut myself on the sharp edge of the packaging.")
    assert "self-harm" not in flagged("I almost hurt myself assembling the chair.")


def test_it_sees_through_repeated_letters_and_leetspeak():
    assert "violence" in flagged("i will kiiiill u")
    assert "self-harm" in flagged("I want to k1ll myself")
    assert "self-harm" in flagged("I   want  to   kill   myself")


def test_swearing_in_a_threat_still_counts_as_harassment():
    # The threat's words are hidden from the abuse model; the swearing is not.
    assert flagged("I'll fucking kill you.") == {"violence", "harassment"}
    assert flagged("I will kill you.") == {"violence"}


def test_a_complaint_about_a_situation_is_not_harassment():
    assert flagged("This is ridiculous. I want a refund now.") == set()
    assert flagged("Sorry if this is a stupid question, how do I log in?") == set()
    assert flagged("You're a stupid idiot.") == {"harassment"}


def test_every_rule_flags_its_own_example():
    for rule in rules.RULES:
        normalised = rules.normalise(rule.example)
        # A rule runs only when the text has one of its `needs` words.
        assert not rule.needs.isdisjoint(rules.words(normalised)), rule.example
        assert rule.pattern.search(normalised), rule.example


# --- secrets ---------------------------------------------------------------------------


def test_it_flags_a_valid_card_number_but_not_one_failing_luhn():
    assert "secrets" in flagged("my card is 4111 1111 1111 1111")
    assert "secrets" in flagged("5500-0000-0000-0004")
    assert "secrets" in flagged("amex 378282246310005")
    assert "secrets" not in flagged("order number 4111 1111 1111 1112")
    # Luhn-valid, but no card network issues numbers starting with 9.
    assert "secrets" not in flagged("reference 9999 9999 9999 9995")


def test_it_flags_a_card_number_written_with_its_cvc():
    assert "secrets" in flagged("card 4111 1111 1111 1111 123")


@pytest.mark.parametrize(
    "text",
    [
        "Tracking 1Z999AA10123456784",
        "USPS 9400 1000 0000 0000 0000 00",
        "call +1 415-555-0132",
        "call 020 7946 0958",
        "ordered on 2024-03-15",
        "invoice INV-2024-000123",
        "total $1,234.56 on 12/27",
    ],
)
def test_it_does_not_flag_tracking_phone_date_or_invoice_numbers(text):
    assert "secrets" not in flagged(text)


def test_it_flags_an_iban_only_when_its_check_digits_hold():
    assert "secrets" in flagged("IBAN GB82WEST12345698765432")
    assert "secrets" in flagged("iban de89 3704 0044 0532 0130 00")
    assert "secrets" not in flagged("IBAN GB83WEST12345698765432")


def test_it_flags_ssns_but_not_numbers_never_issued():
    assert "secrets" in flagged("my SSN is 123-45-6789")
    for never_issued in ("000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567"):
        assert "secrets" not in flagged(f"my SSN is {never_issued}"), never_issued
    assert "secrets" not in flagged("part 123-45-6789 is out of stock")


@pytest.mark.parametrize(
    "key",
    [
        "sk-proj-abc123DEF456ghi789JKL012mno345",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_1234567890abcdefghijABCDEFGHIJ123456",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmn",
        "xoxb-123456789012-1234567890123-AbCdEfGhIj",
        "-----BEGIN EC PRIVATE KEY-----",
    ],
)
def test_it_flags_keys_by_their_issuers_prefixes(key):
    assert "secrets" in flagged(f"here you go: {key}")


def test_it_tells_a_password_from_a_question_about_passwords():
    assert "secrets" in flagged("my password is hunter2")
    assert "secrets" in flagged("password: Tr0ub4dor&3")
    assert "secrets" in flagged("my pin is 4821")
    for question in (
        "I forgot my password",
        "my password is not working",
        "Password: reset link broken",
        "the password must be 8 characters",
        "my PIN is wrong",
    ):
        assert "secrets" not in flagged(question), question


# --- the abuse model ---------------------------------------------------------------------

EDGE_CASES = [
    "",
    "the and of it is",  # only stop words
    "naïve café, 日本語のテキスト, emoji 😡😡",
    ("You are an idiot. " + "Where is my parcel? " * 200)[:4000],
]


def test_abuse_probability_equals_profanity_check():
    texts = [text for text, _ in CASES] + EDGE_CASES
    expected = predict_prob(texts)
    for text, want in zip(texts, expected, strict=True):
        assert abuse_probability(text) == pytest.approx(float(want), abs=1e-6), text


def test_abuse_probability_is_fast():
    sentence = "Hi, my order still hasn't arrived and the tracking page says it's in transit."
    abuse_probability(sentence)
    runs = 2000
    started = time.perf_counter()
    for _ in range(runs):
        abuse_probability(sentence)
    per_call = (time.perf_counter() - started) / runs
    assert per_call < 0.0002


# --- bounds and the moderator ---------------------------------------------------------------


def adversarial_inputs() -> dict[str, str]:
    def fill(unit: str) -> str:
        return (unit * (8000 // len(unit) + 1))[:8000]

    return {
        "one letter": "a" * 8000,
        "one digit": "1" * 8000,
        "threat openings": fill("i will really "),
        "threats": fill("i'll kill "),
        "sexual terms and minors": fill("sex kids "),
        "pairs split by sentences": fill("kids. sex "),
        "card-shaped groups": fill("4111 "),
        "iban openings": fill("GB82 "),
        "ssn shapes": fill("123-45-6789 "),
        "key prefixes": fill("sk-"),
        "group claims": fill("all the jews are all just "),
        "passwords": fill("password: x "),
        "long words": fill("abcdefghijklmnopqrstu "),
    }


def test_worst_case_time_is_bounded():
    classify("warm the model up")
    for name, text in adversarial_inputs().items():
        best = min(_timed(text) for _ in range(3))
        assert best < 0.05, (name, best)


def _timed(text: str) -> float:
    started = time.perf_counter()
    classify(text)
    return time.perf_counter() - started


def test_the_moderator_returns_a_verdict():
    moderator = OfflineModerator()
    flagged_verdict = asyncio.run(moderator.check("I don't want to live anymore."))
    assert flagged_verdict.status == FLAGGED
    assert flagged_verdict.categories == ("self-harm",)
    assert flagged_verdict.self_harm and flagged_verdict.urgent
    assert flagged_verdict.provider == "offline"
    assert set(flagged_verdict.scores) == set(CATEGORIES)
    assert isinstance(flagged_verdict.latency_ms, int)

    passed = asyncio.run(moderator.check("Where is my order?"))
    assert passed.status == PASSED
    assert passed.categories == ()


def test_a_broken_model_install_gives_no_verdict_rather_than_a_crash(monkeypatch):
    monkeypatch.setattr(profanity, "_model", None)
    monkeypatch.setattr(profanity, "_failure", ProfanityModelError("no model files"))
    with pytest.raises(ModerationUnavailable) as raised:
        asyncio.run(OfflineModerator().check("Where is my order?"))
    assert raised.value.code == "offline_model"
