"""Django's PostgreSQL backend, with a connection pool that knows when the database
is away.

psycopg_pool on its own behaves badly across a database restart:

- every request waits for a connection for the whole pool timeout (30 s) while the
  database is down, then fails with a 500, and a burst of them fills every thread
  of a process with waiting;
- it retries connecting with a delay that doubles without bound, so after an outage
  of a minute a process may wait another minute before it tries again.

Here any failed connection attempt marks the database unavailable. While it is, one
request at a time waits up to PROBE_WAIT_SECONDS for the pool to reconnect (that
request also restarts the pool's attempts when they have given up) and every other
request fails at once with DatabaseUnavailable, an OperationalError: the HTTP API
answers 503 `unavailable`, sockets send `unavailable`, workers retry their writes.
A successful connection, or a pooled one that passes its health check, marks the
database reachable again. A series of reconnection attempts ends after
RECONNECT_SECONDS and the next request starts a fresh one, so attempts are never
more than about two seconds apart and a process notices the database is back
within seconds of it accepting connections.
"""

from __future__ import annotations

import logging
import threading
from time import monotonic
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from psycopg_pool import ConnectionPool, PoolTimeout

logger = logging.getLogger("supportbot.db")

# How long the one request allowed to wait while the database is unavailable waits
# for the pool to reconnect.
PROBE_WAIT_SECONDS = 2.0
# A request waiting on a busy pool looks this often whether the database went away
# meanwhile (then it stops waiting).
NOTICE_SECONDS = 1.0
# psycopg_pool's reconnect_timeout: a series of attempts (1 s, 2 s, 2 s apart) ends
# after this long; the next request that needs a connection starts a new one.
RECONNECT_SECONDS = 5.0


class DatabaseUnavailable(PoolTimeout):
    """A connection attempt failed moments ago: failing at once beats waiting."""


class Reachability:
    """Whether this process's last attempt to reach the database worked."""

    def __init__(self) -> None:
        self.down = False
        self._probing = False
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        if not self.down:
            logger.warning(
                "the database is unreachable (%s); requests fail at once until it is back",
                type(error).__name__,
            )
        self.down = True

    def reached(self) -> None:
        if self.down:
            logger.warning("the database is reachable again")
        self.down = False

    def start_probe(self) -> bool:
        with self._lock:
            if self._probing:
                return False
            self._probing = True
            return True

    def end_probe(self) -> None:
        with self._lock:
            self._probing = False


class OutageAwarePool(ConnectionPool):
    """A psycopg ConnectionPool that fails fast while the database is unreachable."""

    def __init__(self, *args: Any, check: Any = None, **kwargs: Any) -> None:
        reachability = self.reachability = Reachability()

        class Connection(psycopg.Connection):
            # Every connection the pool opens goes through here: the one place that
            # sees the database refuse or accept connections.
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = super().connect(*args, **kwargs)
                except Exception as error:
                    reachability.failed(error)
                    raise
                reachability.reached()
                return conn

        # Always checked: after a restart every pooled connection is dead, and an
        # unchecked pool hands each one out to fail a request.
        checker = check or ConnectionPool.check_connection

        def checked(conn: psycopg.Connection) -> None:
            checker(conn)
            reachability.reached()

        kwargs.setdefault("reconnect_timeout", RECONNECT_SECONDS)
        super().__init__(*args, connection_class=Connection, check=checked, **kwargs)

    def getconn(self, timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        deadline = monotonic() + timeout
        while True:
            if self.reachability.down:
                return self._probe(deadline)
            left = deadline - monotonic()
            if left <= 0:
                raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")
            try:
                # In slices, so a request that started waiting just before the
                # database went away does not wait out the whole timeout. (A waiter
                # loses its place in the queue each slice: only when every
                # connection is busy, and never past the timeout.)
                return super().getconn(min(left, NOTICE_SECONDS))
            except PoolTimeout:
                continue

    def _probe(self, deadline: float) -> Any:
        if not self.reachability.start_probe():
            raise DatabaseUnavailable("the database is unavailable; try again shortly")
        try:
            wait = max(0.01, min(PROBE_WAIT_SECONDS, deadline - monotonic()))
            try:
                return super().getconn(wait)
            except PoolTimeout:
                raise DatabaseUnavailable(
                    "the database is unavailable; try again shortly"
                ) from None
        finally:
            self.reachability.end_probe()


class DatabaseWrapper(postgresql.DatabaseWrapper):
    @property
    def pool(self) -> OutageAwarePool | None:
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            # As Django's own property, with the outage-aware pool (Django offers no
            # way to choose the pool class).
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            options = {} if pool_options is True else dict(pool_options)
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True
            pool = OutageAwarePool(
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,
                **options,
            )
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
