"""The text so far of each streaming reply, in Redis, so a client that (re)connects
mid-reply gets a snapshot and then only the deltas it has not seen."""

from __future__ import annotations

from conversations.redis_clients import async_redis, sync_redis

# Long enough to outlive any reply (REPLY_TIME_LIMIT) with a margin.
_TTL_SECONDS = 3600


def _keys(message_id: int) -> tuple[str, str]:
    return f"reply:{message_id}:text", f"reply:{message_id}:next"


async def record_delta(message_id: int, index: int, text: str) -> None:
    text_key, next_key = _keys(message_id)
    pipe = async_redis().pipeline(transaction=True)
    pipe.append(text_key, text.encode())
    pipe.set(next_key, index + 1)
    pipe.expire(text_key, _TTL_SECONDS)
    pipe.expire(next_key, _TTL_SECONDS)
    await pipe.execute()


async def snapshot(message_id: int) -> tuple[str, int]:
    """(text so far, index of the next delta) of a reply."""
    text, next_index = await async_redis().mget(*_keys(message_id))
    return (text or b"").decode(errors="replace"), int(next_index or 0)


async def forget(message_id: int) -> None:
    await async_redis().delete(*_keys(message_id))


def text_so_far(message_id: int) -> str:
    """The streamed text of a reply, from sync code (empty if Redis lost it)."""
    try:
        raw = sync_redis().get(_keys(message_id)[0])
    except Exception:  # the reply is failed either way; its text is a courtesy
        return ""
    return (raw or b"").decode(errors="replace")
