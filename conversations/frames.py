"""Validation of visitor websocket frames: hostile input in, a typed frame or an error out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from conversations.text import storable

MAX_CLIENT_ID = 100


class FrameError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Hello:
    token: str
    last_seq: int


@dataclass(frozen=True)
class VisitorText:
    text: str
    client_id: str | None


def parse(raw: str) -> dict[str, Any]:
    # The limit is in bytes as sent (UTF-8); a character can take up to 4.
    if (
        len(raw) > settings.WS_MAX_FRAME_BYTES
        or len(raw.encode("utf-8", "surrogatepass")) > settings.WS_MAX_FRAME_BYTES
    ):
        raise FrameError("too_long", f"Frames are limited to {settings.WS_MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        raise FrameError("bad_request", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_request", "A frame must be a JSON object.")
    if not isinstance(frame.get("type"), str):
        raise FrameError("bad_request", 'A frame needs a string "type".')
    return frame


def hello(frame: dict[str, Any]) -> Hello:
    token = frame.get("token")
    last_seq = frame.get("last_seq", 0)
    if last_seq is None:
        last_seq = 0
    if not isinstance(token, str) or not token or not storable(token):
        raise FrameError("bad_request", "hello needs a token.")
    if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
        raise FrameError("bad_request", "last_seq must be a whole number, 0 or more.")
    return Hello(token=token, last_seq=last_seq)


def visitor_text(frame: dict[str, Any]) -> VisitorText:
    text = frame.get("text")
    client_id = frame.get("client_id")
    if not isinstance(text, str):
        raise FrameError("bad_request", "A message needs a string text.")
    text = text.strip()
    if not storable(text):
        raise FrameError("bad_request", "The text contains characters that cannot be stored.")
    if not text:
        raise FrameError("bad_request", "The message is empty.")
    if len(text) > settings.MESSAGE_MAX_CHARS:
        raise FrameError(
            "too_long", f"Messages are limited to {settings.MESSAGE_MAX_CHARS} characters."
        )
    if client_id is not None and (
        not isinstance(client_id, str)
        or not 0 < len(client_id) <= MAX_CLIENT_ID
        or not storable(client_id)
    ):
        raise FrameError(
            "bad_request", f"client_id must be a string of 1 to {MAX_CLIENT_ID} characters."
        )
    return VisitorText(text=text, client_id=client_id)
