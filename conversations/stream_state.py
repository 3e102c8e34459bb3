"""The text so far of each streaming reply, in Redis, so a client that (re)connects
mid-reply gets a snapshot and then only the deltas it has not seen."""

from __future__ import annotations

from collections.abc import Callable

from conversations.redis_clients import async_redis, sync_redis

_scripts: dict[int, object] = {}

# Long enough to outlive any reply (REPLY_TIME_LIMIT) with a margin.
_TTL_SECONDS = 3600


def _keys(message_id: int) -> tuple[str, str]:
    return f"reply:{message_id}:text", f"reply:{message_id}:next"


def _cancel_key(message_id: int) -> str:
    return f"reply:{message_id}:cancel"


class Cancelled(Exception):
    """A person took the conversation over (or closed it): the reply must stop."""


# One round trip per delta instead of a MULTI pipeline's six commands. A reply whose
# conversation a person took over records nothing more (and so sends nothing more).
# Mode "check" reports (2) a snapshot that Redis lost (it restarted empty: the
# index of the next delta is gone) instead of appending to nothing; mode "replace"
# then writes the whole text so far.
_RECORD = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
if ARGV[4] == 'check' and redis.call('EXISTS', KEYS[2]) == 0 then
  return 2
end
if ARGV[4] == 'replace' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('APPEND', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


async def record_delta(
    message_id: int, index: int, text: str, *, text_before: Callable[[], str] | None = None
) -> None:
    """Append a delta to the snapshot; raises Cancelled if the reply was stopped.

    `text_before` gives the text of the deltas before this one: with it, a snapshot
    that Redis lost (a restart) is written again whole, so a client that joins
    later gets all the text so far, not just what came after the restart.
    """
    client = async_redis()
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_RECORD)
    keys = [*_keys(message_id), _cancel_key(message_id)]
    mode = "check" if index > 0 and text_before is not None else "append"
    recorded = await script(keys=keys, args=[text.encode(), index + 1, _TTL_SECONDS, mode])
    if recorded == 2 and text_before is not None:
        full = (text_before() + text).encode()
        recorded = await script(keys=keys, args=[full, index + 1, _TTL_SECONDS, "replace"])
    if not recorded:
        raise Cancelled(message_id)


def cancel_sync(message_ids: list[int]) -> None:
    """Stop these replies at their next delta (from sync code, after a commit)."""
    pipe = sync_redis().pipeline()
    for message_id in message_ids:
        pipe.set(_cancel_key(message_id), 1, ex=_TTL_SECONDS)
    pipe.execute()


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
