"""Celery tasks: take ids, call one service, own their retries."""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import close_old_connections

from conversations import replies, services

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate_reply(visitor_message_id: int) -> None:
    # No automatic retry: a failed reply is stored as failed and the visitor told
    # (reply_failed); replies.reply_generate is idempotent per visitor message, so a
    # redelivery after a lost worker cannot answer twice.
    replies.reply_generate(visitor_message_id=visitor_message_id)


@shared_task(ignore_result=True)
def health_probe(token: str) -> None:
    """/healthz's proof that a worker consumes the reply queue."""
    from conversations.health import health_probe_key
    from conversations.redis_clients import sync_redis

    sync_redis().set(health_probe_key(token), 1, ex=30)


@worker_ready.connect
def _warm_up_the_offline_moderator(**kwargs) -> None:
    """Read the abuse model (seconds) before the first visitor waits on it."""

    def warm() -> None:
        from conversations.moderation import profanity

        try:
            profanity.warm_up()
        except Exception:
            logger.exception("the offline moderator's model failed to load")

    threading.Thread(target=warm, name="moderator-warm-up", daemon=True).start()


@worker_ready.connect
def _start_stale_reply_sweeper(**kwargs) -> None:
    """Every worker also fails replies whose worker died (their lease lapsed), and
    queues again messages whose task died unprocessed, so no visitor waits on a
    dead worker for longer than a few sweeps."""
    stop = threading.Event()

    def sweep() -> None:
        suspects: set[int] = set()
        while not stop.wait(settings.REPLY_SWEEP_SECONDS):
            try:
                failed, suspects = services.replies_fail_lost(suspects=suspects)
                failed += services.replies_fail_stale()
                if failed:
                    logger.warning("failed %d replies left streaming by lost workers", failed)
                requeued = services.messages_requeue_unprocessed()
                if requeued:
                    logger.warning("queued %d unprocessed visitor messages again", requeued)
            except Exception:
                logger.exception("stale reply sweep failed")
            finally:
                close_old_connections()

    threading.Thread(target=sweep, name="stale-reply-sweeper", daemon=True).start()
