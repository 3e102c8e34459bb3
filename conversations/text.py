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
