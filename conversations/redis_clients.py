"""Shared Redis clients: one sync client per process, one async client per event loop."""

from __future__ import annotations

import asyncio
import threading
import weakref

import redis
import redis.asyncio
from django.conf import settings

_sync_client: redis.Redis | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()

_OPTIONS = {"socket_connect_timeout": 5, "socket_timeout": 5, "health_check_interval": 30}


def sync_redis() -> redis.Redis:
    global _sync_client
    with _lock:
        if _sync_client is None:
            _sync_client = redis.Redis.from_url(settings.REDIS_URL, **_OPTIONS)
        return _sync_client


def async_redis() -> redis.asyncio.Redis:
    """The async client bound to the running loop (a client cannot cross loops)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # Blocking: a burst (hundreds of replies sending their first delta at once)
        # waits for a free connection instead of failing with MaxConnectionsError
        # (redis-py's default pool raises past 100 connections).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=64, timeout=10, **_OPTIONS
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client
