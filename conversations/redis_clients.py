"""Shared Redis clients: one sync client per process, one async client per event loop."""

from __future__ import annotations

import asyncio
import threading
import weakref

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from django.conf import settings
from redis.backoff import ExponentialBackoff, NoBackoff

_sync_client: redis.Redis | None = None
_probe_client: redis.Redis | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()

_OPTIONS = {"socket_connect_timeout": 5, "socket_timeout": 5, "health_check_interval": 30}

# Only connection errors are retried: the command never reached Redis, or Redis went
# away. A timeout may mean the command ran, and running it twice (APPEND) is worse.
_RETRIED = (redis.exceptions.ConnectionError,)


def retry_backoff() -> ExponentialBackoff:
    """Pauses between reconnection attempts: 0.2, 0.4, 0.8, then 1 s."""
    return ExponentialBackoff(cap=1.0, base=0.1)


def retry_attempts(seconds: float) -> int:
    """Retries that make a command wait about `seconds` for a Redis that refuses
    connections before it fails; a Redis that comes back sooner is used at once.
    At least one: a pooled connection that a restart left dead is replaced, not
    reported."""
    attempts = 1
    while _pauses(attempts) < seconds:
        attempts += 1
    return attempts


def _pauses(retries: int) -> float:
    backoff = retry_backoff()
    return sum(backoff.compute(failure) for failure in range(1, retries + 1))


def retry_policy(seconds: float) -> redis.asyncio.retry.Retry:
    """For asyncio clients, the channel layer's included (settings.CHANNEL_LAYERS):
    redis-py does not retry at all when handed a connection pool of one's own."""
    return redis.asyncio.retry.Retry(
        retry_backoff(), retry_attempts(seconds), supported_errors=_RETRIED
    )


def _sync_retry_policy(seconds: float) -> redis.retry.Retry:
    return redis.retry.Retry(retry_backoff(), retry_attempts(seconds), supported_errors=_RETRIED)


def sync_redis() -> redis.Redis:
    global _sync_client
    with _lock:
        if _sync_client is None:
            _sync_client = redis.Redis.from_url(
                settings.REDIS_URL,
                retry=_sync_retry_policy(settings.REDIS_RETRY_SECONDS),
                **_OPTIONS,
            )
        return _sync_client


def probe_redis() -> redis.Redis:
    """For /healthz: one reconnect (a connection a restart left dead), no waiting, so
    a probe answers at once while Redis is down."""
    global _probe_client
    with _lock:
        if _probe_client is None:
            _probe_client = redis.Redis.from_url(
                settings.REDIS_URL,
                retry=redis.retry.Retry(NoBackoff(), 1, supported_errors=_RETRIED),
                **{**_OPTIONS, "socket_connect_timeout": 1, "socket_timeout": 2},
            )
        return _probe_client


def async_redis() -> redis.asyncio.Redis:
    """The async client bound to the running loop (a client cannot cross loops)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # Blocking: a burst (hundreds of replies sending their first delta at once)
        # waits for a free connection instead of failing with MaxConnectionsError
        # (redis-py's default pool raises past 100 connections).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=64,
            timeout=10,
            retry=retry_policy(settings.REDIS_RETRY_SECONDS),
            **_OPTIONS,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client
