"""Fixed-window rate limits kept in Redis, shared by every server process."""

from __future__ import annotations

import time
from dataclasses import dataclass

from conversations.redis_clients import async_redis, sync_redis


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds until the window resets; 0 when allowed


def _key(scope: str, subject: str, window: int) -> tuple[str, int]:
    now = int(time.time())
    bucket = now // window
    return f"rl:{scope}:{subject}:{bucket}", window - (now % window)


def hit(scope: str, subject: str, *, limit: int, window: int) -> Verdict:
    key, reset = _key(scope, subject, window)
    pipe = sync_redis().pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _ = pipe.execute()
    return Verdict(True, 0) if count <= limit else Verdict(False, max(reset, 1))


async def ahit(scope: str, subject: str, *, limit: int, window: int) -> Verdict:
    key, reset = _key(scope, subject, window)
    pipe = async_redis().pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _ = await pipe.execute()
    return Verdict(True, 0) if count <= limit else Verdict(False, max(reset, 1))
