"""The Celery app; its settings are the CELERY_* names in supportbot.settings."""

from __future__ import annotations

import logging
import os

from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportbot.settings")

logger = logging.getLogger(__name__)


class _QoSThatOutlivesItsConnection(kombu_redis.QoS):
    """Kombu's Redis acknowledgements, minus a crash after a lost broker connection.

    When a worker loses Redis (a restart), Celery 5.7 first collects the broken
    connection, which drops the transport's reference to its settings, and then
    closes it. Closing the channel restores the unacknowledged messages through a new
    Redis client built from those settings, and raises AttributeError: with a reply
    streaming (acks_late) the worker died ("Unrecoverable error") instead of
    reconnecting (tests/test_redis_restart.py). The same happens to the late ack of
    a task that was running across the reconnect: it reaches the new connection's
    event loop through the old channel and killed the worker the same way.

    Once the connection is gone the unacknowledged messages stay where they are:
    in Redis's unacked set if Redis kept its data (Redis redelivers them after the
    visibility timeout, and the reply task is idempotent), or nowhere if it lost it.
    """

    def _connection_gone(self) -> bool:
        # Collected: the transport lost its client; closed: the channel lost its transport.
        transport = self.channel.connection
        return transport is None or transport.client is None

    def restore_unacked(self, client=None):
        if client is None and self._connection_gone():
            logger.warning(
                "broker connection lost with %d unacknowledged task(s); Redis "
                "redelivers them after the visibility timeout if it still has them",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return super().restore_unacked(client)

    def ack(self, delivery_tag) -> None:
        if self._connection_gone():
            virtual.QoS.ack(self, delivery_tag)  # this process's bookkeeping only
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue: bool = False) -> None:
        if self._connection_gone():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


# Sentinel channels subclass this one and inherit it.
kombu_redis.Channel.QoS = _QoSThatOutlivesItsConnection

app = Celery("supportbot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
