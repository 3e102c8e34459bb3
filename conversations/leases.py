"""Leases on streaming replies: proof, renewed every few seconds, that a reply's
worker is alive.

Each worker process renews the leases of all the replies it is writing with one
Redis pipeline on its event loop. A worker killed outright stops renewing; its
replies' leases lapse within REPLY_LEASE_SECONDS, and any other worker's sweep
(tasks.py) fails them, so the visitor hears within seconds rather than after the
broker's visibility timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from django.conf import settings

from conversations import background_loop
from conversations.redis_clients import async_redis, sync_redis

logger = logging.getLogger(__name__)

_held: set[int] = set()
_lock = threading.Lock()
_keeper: asyncio.Task | None = None


def key(reply_id: int) -> str:
    return f"reply:{reply_id}:lease"


def hold(reply_id: int) -> None:
    """Start renewing this reply's lease (from the task thread, right after it exists)."""
    try:
        sync_redis().set(key(reply_id), 1, ex=settings.REPLY_LEASE_SECONDS)
    except Exception:  # the keeper sets it on its next round
        logger.warning("could not take the lease of reply %s", reply_id)
    with _lock:
        _held.add(reply_id)
    loop = background_loop.get_loop()

    def ensure_keeper() -> None:
        global _keeper
        if _keeper is None or _keeper.done():
            _keeper = loop.create_task(_renew_forever())

    loop.call_soon_threadsafe(ensure_keeper)


def release(reply_id: int) -> None:
    with _lock:
        _held.discard(reply_id)
    try:
        sync_redis().delete(key(reply_id))
    except Exception:  # it expires on its own
        logger.warning("could not drop the lease of reply %s", reply_id)


async def _renew_forever() -> None:
    interval = settings.REPLY_LEASE_SECONDS / 3
    while True:
        await asyncio.sleep(interval)
        with _lock:
            held = list(_held)
        if not held:
            continue
        try:
            pipe = async_redis().pipeline(transaction=False)
            for reply_id in held:
                pipe.set(key(reply_id), 1, ex=settings.REPLY_LEASE_SECONDS)
            await pipe.execute()
        except Exception:
            # Redis is away (a restart): keep trying; a sweep fails a reply only after
            # its lease has been missing for two sweeps in a row.
            logger.warning("could not renew %d reply leases", len(held))


def lapsed(reply_ids: list[int]) -> set[int]:
    """The replies among these whose lease is gone."""
    if not reply_ids:
        return set()
    values = sync_redis().mget([key(reply_id) for reply_id in reply_ids])
    return {reply_id for reply_id, value in zip(reply_ids, values, strict=True) if value is None}
