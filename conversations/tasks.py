"""Celery tasks: take ids, call one service, own their retries."""

from __future__ import annotations

from celery import shared_task

from conversations import replies


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate_reply(visitor_message_id: int) -> None:
    # No automatic retry: a failed reply is stored as failed and the visitor told
    # (reply_failed); replies.reply_generate is idempotent per visitor message, so a
    # redelivery after a lost worker cannot answer twice.
    replies.reply_generate(visitor_message_id=visitor_message_id)
