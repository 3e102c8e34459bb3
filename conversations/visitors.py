"""Visitor tokens: signed, bound to one site, stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.core import signing

_SALT = "supportbot.visitor-token"
_MAX_TOKEN_LENGTH = 200


def issue_token(site_key: str) -> str:
    return signing.Signer(salt=_SALT).sign(f"{site_key}:{secrets.token_urlsafe(18)}")


def site_key_of(token: object) -> str | None:
    """The site a well-formed, genuinely signed token belongs to, or None."""
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_LENGTH:
        return None
    try:
        value = signing.Signer(salt=_SALT).unsign(token)
    except (signing.BadSignature, UnicodeEncodeError):
        # UnicodeEncodeError: a lone surrogate (JSON "\ud800"), never in a token we issue.
        return None
    site_key, _, _ = value.partition(":")
    return site_key or None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def owns(token: str, visitor_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), visitor_hash)
