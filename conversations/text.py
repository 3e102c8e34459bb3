"""Checks on strings from outside before they reach PostgreSQL."""


def storable(text: str) -> bool:
    """False for NUL and for lone surrogates (JSON can carry "\\ud800"): PostgreSQL
    refuses both, even inside a query parameter."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def made_storable(text: str) -> str:
    """The text without NUL and with lone surrogates replaced (U+FFFD): for text the
    service relays rather than refuses, such as the model's answer, which must be
    stored as the visitor saw it."""
    if storable(text):
        return text
    cleaned = text.replace("\x00", "")
    return "".join(c if not 0xD800 <= ord(c) <= 0xDFFF else "\ufffd" for c in cleaned)
