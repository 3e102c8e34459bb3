"""Words visitors use for what help centres call by other names.

Full-text search matches stems, not meanings; these pairs cover the commonest
gaps in support questions ("log in" vs "sign in", "money back" vs "refund").
Kept short on purpose: every entry widens every query that uses the word.
"""

from __future__ import annotations

import re

_COUNTRIES = (
    "abroad international country countries overseas canada mexico brazil argentina chile "
    "japan china india korea singapore australia zealand africa egypt nigeria turkey "
    "russia ukraine poland norway sweden finland denmark switzerland iceland israel "
    "emirates dubai saudi"
).split()

_GROUPS = [
    tuple(_COUNTRIES),
    ("create", "register", "registration", "signup"),
    ("delete", "close", "remove", "erase"),
    ("wipe", "reset"),
    ("human", "person", "contact", "support", "talk"),
    ("social", "instagram", "facebook", "twitter", "tiktok", "whatsapp", "messenger"),
    ("login", "signin", "password"),
    ("refund", "reimburse", "reimbursement", "money"),
    ("cancel", "cancellation", "unsubscribe", "stop"),
    ("subscription", "plan", "membership", "plus"),
    ("deliver", "delivery", "shipping", "ship", "shipment", "parcel", "package"),
    ("broken", "damaged", "defective", "faulty"),
    ("return", "exchange", "send back"),
    ("invoice", "receipt", "bill", "vat"),
    ("charge", "payment", "pay", "billed", "card"),
    ("wifi", "wi-fi", "wireless", "network", "router"),
    ("reset", "restore"),
    ("account", "profile"),
    ("email", "e-mail", "address"),
    ("order", "purchase", "bought"),
    ("app", "application"),
    ("guarantee", "warranty"),
    ("discount", "promo", "coupon", "voucher", "code"),
    ("contact", "call", "support", "agent"),
]

# Phrases that mean one word; rewritten before the question is split into words.
_PHRASES = {
    "sign up": "signup",
    "signed up": "signup",
    "log in": "login",
    "logged in": "login",
    "sign in": "login",
    "get rid of": "delete",
    "send back": "return",
    "send it back": "return",
    "send the lamp back": "return",
    "money back": "refund",
    "wi fi": "wifi",
}
_PHRASE_RE = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in sorted(_PHRASES, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def rewrite_phrases(text: str) -> str:
    return _PHRASE_RE.sub(lambda m: _PHRASES[m.group(1).lower()], text)


_INDEX: dict[str, set[str]] = {}
for group in _GROUPS:
    for word in group:
        _INDEX.setdefault(word, set()).update(group)


def expand(words: list[str]) -> list[str]:
    """The words plus their synonyms, without repeats, originals first."""
    out = list(dict.fromkeys(words))
    for word in words:
        for other in sorted(_INDEX.get(word, ())):
            if other not in out:
                out.append(other)
    return out
