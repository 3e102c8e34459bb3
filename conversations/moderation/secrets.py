"""Secrets a visitor should not paste into a chat: card numbers, IBANs, US social
security numbers, API keys and tokens, and "password: ..." disclosures.

Numbers must prove themselves, because support talk is full of digits (order,
tracking, phone and invoice numbers): a card number needs a valid Luhn checksum
and a card network's prefix and length, an IBAN its country's length and the
mod-97 check. Keys are matched by their issuers' fixed prefixes.

Runs on the raw text: keys are case-sensitive and normalising would bend digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# --- payment cards --------------------------------------------------------------------

# (lowest prefix, highest prefix, lengths): the networks' published IIN ranges.
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset(range(16, 20))),  # Discover
    (644, 649, frozenset(range(16, 20))),
    (65, 65, frozenset(range(16, 20))),
    (300, 305, frozenset(range(14, 20))),  # Diners Club
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (62, 62, frozenset(range(16, 20))),  # UnionPay
    (2200, 2204, frozenset(range(16, 20))),  # Mir
    (50, 50, frozenset(range(13, 20))),  # Maestro
    (56, 58, frozenset(range(13, 20))),
    (6304, 6304, frozenset(range(13, 20))),
    (6759, 6763, frozenset(range(13, 20))),
)

# Digit groups joined by single spaces or dashes; each repetition needs its separator,
# so the match is linear. One scan of these serves cards, IBANs and SSNs: a regex
# pass costs about as much per character as all three checks on what it finds.
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_SEPARATOR = re.compile(r"[ -]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    length = len(digits)
    for low, high, lengths in _CARD_RANGES:
        if length in lengths and low <= int(digits[: len(str(low))]) <= high:
            return True
    return False


def _is_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _card_network(digits) and _luhn(digits)


def _card_windows(groups: list[str]) -> Iterator[str]:
    """Card-shaped runs of whole groups: fours with a short tail (4-4-4-4, 4-4-4-4-3)
    or American Express's 4-6-5."""
    sizes = [len(g) for g in groups]
    for i, size in enumerate(sizes):
        if size != 4:
            continue
        if sizes[i + 1 : i + 3] == [6, 5]:
            yield "".join(groups[i : i + 3])
        # Extend while the groups are fours; the group after the last four is the tail.
        j = i
        while j < len(sizes) and sizes[j] == 4 and j - i < 4:
            j += 1
            if j - i >= 3:
                yield "".join(groups[i:j])
                if j < len(sizes) and sizes[j] < 4:
                    yield "".join(groups[i : j + 1])


def _card_at(text: str, run: re.Match[str]) -> bool:
    # The tail of an amount or a date ("1,234.56", "12/27") is not a card.
    if run.start() and text[run.start() - 1] in ".,/":
        return False
    groups = _SEPARATOR.split(run.group())
    if _is_card("".join(groups)):
        return True
    # A card number with more digits written next to it ("4111 1111 1111 1111 123",
    # the CVC): try the card-shaped runs of groups inside it.
    return len(groups) > 3 and any(_is_card(w) for w in _card_windows(groups))


def has_card_number(text: str) -> bool:
    return any(_card_at(text, run) for run in _DIGIT_RUN.finditer(text))


# --- IBAN -----------------------------------------------------------------------------

_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "DO": 28, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22,
    "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31,
    "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24,
    "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip
# Country, check digits, then the account in any grouping; the length check below
# decides where it ends. Tried only where a digit run follows two letters.
_IBAN = re.compile(r"\b[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}")


# ISO 13616: letters count as 10 (A) to 35 (Z).
_IBAN_LETTERS = str.maketrans({chr(ord("A") + i): str(10 + i) for i in range(26)})


def _iban_valid(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    return int(rearranged.translate(_IBAN_LETTERS)) % 97 == 1


def _iban_at(text: str, run: re.Match[str]) -> bool:
    start = run.start() - 2
    if start < 0 or not text[start : run.start()].isalpha():
        return False
    match = _IBAN.match(text, start)
    if match is None:
        return False
    compact = match.group().replace(" ", "").upper()
    length = _IBAN_LENGTHS.get(compact[:2])
    return bool(length) and len(compact) >= length and _iban_valid(compact[:length])


def has_iban(text: str) -> bool:
    return any(_iban_at(text, run) for run in _DIGIT_RUN.finditer(text))


# --- US social security numbers ----------------------------------------------------------

# Area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
# Part and order numbers share the shape; their label says which they are.
_NOT_SSN_LABEL = re.compile(
    r"\b(?:sku|part|model|order|invoice|ref|reference|tracking|serial|item|product|case"
    r"|ticket|lot|batch|version)\b[^\n]{0,20}$",
    re.IGNORECASE,
)


def _ssn_at(text: str, run: re.Match[str]) -> bool:
    if "-" not in run.group():
        return False
    for match in _SSN.finditer(run.group()):
        start = run.start() + match.start()
        if not _NOT_SSN_LABEL.search(text[max(0, start - 40) : start]):
            return True
    return False


def has_ssn(text: str) -> bool:
    return any(_ssn_at(text, run) for run in _DIGIT_RUN.finditer(text))


# --- keys and tokens ---------------------------------------------------------------------

# (a literal every match contains, the pattern): the literal is a C substring test
# that spares running the pattern on text that cannot match.
_KEYS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (literal, re.compile(pattern))
    for literal, pattern in (
        # OpenAI, Anthropic
        ("sk-", r"\bsk-(?:proj-|live-|test-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
        ("k_", r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),  # Stripe
        ("IA", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
        ("_", r"\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}"),  # GitHub
        ("xox", r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),  # Slack
        ("AIza", r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API key
        ("eyJ", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # JWT
        ("PRIVATE KEY", r"-----BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY-----"),
    )
)


def has_key(text: str) -> bool:
    return any(literal in text and pattern.search(text) for literal, pattern in _KEYS)


# --- password disclosures ------------------------------------------------------------------

_PASSWORD = re.compile(
    r"\b(?P<label>password|passwd|pwd|passcode|pass code|pin(?: code| number)?)"
    # "password for my account is X", "password: X", "password is X", "password X".
    r"(?:(?P<whose> (?:for|to|of)(?: [\w@.-]{1,30}){1,3}?)?(?P<sep>\s*[:=]\s*|\s+(?:is|was)\s+)"
    r"|\s+)"
    r"(?P<value>\"[^\"\n]{1,64}\"|'[^'\n]{1,64}'|\S{1,64})",
    re.IGNORECASE,
)
# Words that follow "password:" or "password is" in questions about passwords.
_NOT_A_VALUE = frozenset(
    "reset forgot forgotten help change changed changing required incorrect wrong not "
    "none n/a na expired invalid missing recovery problem problems issue issues error "
    "please same too still now also the my a an and or but doesn't isn't wasn't won't "
    "can't never always correct right ok okay fine updated new old blank empty saved on in "
    "at being case-sensitive different short long strong weak".split()
)
# A symbol inside a word; a hyphen or apostrophe between letters is just spelling.
_SYMBOL_INSIDE = re.compile(r"\w[^\w\s'-]+\w")


def _value_like(value: str, strict: bool) -> bool:
    if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) > 2:
        return True
    value = value.rstrip(".,!?;:)")
    if value.lower() in _NOT_A_VALUE or not value:
        return False
    if value.isdigit():
        return len(value) >= 4
    letters = any(c.isalpha() for c in value)
    digits = any(c.isdigit() for c in value)
    if letters and digits and len(value) >= 5:
        return True
    if _SYMBOL_INSIDE.search(value) and len(value) >= 6:
        return True
    # After "password:" (or "the password to my account is") any word is a value; after
    # a bare "password is" only a password-like one: "my password is expired".
    return not strict and len(value) >= 3 and value.isalpha()


def has_password(text: str) -> bool:
    lowered = text.lower()
    if "pass" not in lowered and "pwd" not in lowered and "pin" not in lowered:
        return False
    for match in _PASSWORD.finditer(text):
        sep = (match.group("sep") or "").strip()
        strict = sep not in (":", "=") and not match.group("whose")
        if _value_like(match.group("value"), strict=strict):
            return True
    return False


def contains_secret(text: str) -> bool:
    """True when `text` discloses a card, IBAN, SSN, key, token or password."""
    for run in _DIGIT_RUN.finditer(text):
        if _card_at(text, run) or _iban_at(text, run) or _ssn_at(text, run):
            return True
    return has_key(text) or has_password(text)
