"""Nothing acknowledged is lost: a broker outage, a closed conversation, a lost worker."""

from __future__ import annotations

import os
from datetime import timedelta

from django.utils import timezone

from conversations import handoff, services
from conversations.models import Conversation, Message
from conversations.moderation.verdict import PASSED, Verdict
from conversations.redis_clients import sync_redis
from tests.scripted_llm import Script
from tests.stack import AsgiServer
from tests.visitor import Visitor, run


def test_it_keeps_a_message_it_could_not_queue_and_answers_it_when_resent(stack, site, llm):
    llm.default = Script(tokens=["Back", " again"])
    # A second web server whose broker is unreachable: storing works, queueing fails.
    broken = AsgiServer(dict(stack.env, CELERY_BROKER_URL="redis://127.0.0.1:9/0"), stack.log_dir)
    try:
        down = Visitor(broken.url, broken.ws_url, site.public_key)
        conversation = down.start()

        async def send_while_broker_is_down():
            async with down.socket(conversation) as socket:
                await socket.say("Where is my parcel?", client_id="parcel-1")
                # The error is sent at once; the echo comes through the channel layer.
                seen = await socket.until(lambda e: e["type"] == "error", timeout=30)
                if not any(e["type"] == "message" for e in seen):
                    seen += await socket.until(lambda e: e["type"] == "message", timeout=10)
                return seen

        events = run(send_while_broker_is_down())
    finally:
        broken.stop()
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "unavailable" and error["client_id"] == "parcel-1"
    echo = [e for e in events if e["type"] == "message"]
    assert [e["message"]["client_id"] for e in echo] == ["parcel-1"]
    assert Message.objects.filter(client_id="parcel-1").count() == 1
    assert not Message.objects.filter(role=Message.Role.ASSISTANT).exists()

    up = Visitor(stack.http_url, stack.ws_url, site.public_key)
    up.token = down.token

    async def resend():
        async with up.socket(conversation, last_seq=1) as socket:
            await socket.say("Where is my parcel?", client_id="parcel-1")
            return await socket.reply()

    events, done = run(resend())
    again = next(e for e in events if e["type"] == "message" and e["message"]["role"] == "visitor")
    assert again["message"]["client_id"] == "parcel-1" and again["message"]["seq"] == 1
    assert done["text"] == "Back again"
    assert Message.objects.filter(client_id="parcel-1").count() == 1
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 1


def test_it_refuses_messages_and_handoffs_in_a_closed_conversation(visitor, llm):
    conversation = visitor.start()
    Conversation.objects.filter(pk=conversation["conversation"]["id"]).update(
        status=Conversation.Status.CLOSED
    )

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("anyone there?", client_id="late-1")
            first = await socket.recv()
            await socket.send({"type": "handoff"})
            second = await socket.recv()
            await socket.send({"type": "ping"})
            third = await socket.recv()
            return first, second, third

    first, second, third = run(scenario())
    assert first["type"] == "error" and first["code"] == "conversation_closed"
    assert first["client_id"] == "late-1"
    assert second["type"] == "error" and second["code"] == "conversation_closed"
    assert third == {"type": "pong"}
    assert not Message.objects.filter(conversation_id=conversation["conversation"]["id"]).exists()


def test_it_names_the_client_id_of_a_message_frame_it_rejects(visitor, llm):
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("x" * 4001, client_id="long-1")
            return await socket.recv()

    error = run(scenario())
    assert error["code"] == "too_long" and error["client_id"] == "long-1"


def test_a_redelivered_task_fails_a_reply_its_dead_worker_left_streaming(transactional_db, site):
    conversation = Conversation.objects.create(site=site, visitor_hash="x" * 64, seq=2)
    question = Message.objects.create(
        conversation=conversation, seq=1, role="visitor", text="hi", client_id="q"
    )
    reply = Message.objects.create(
        conversation=conversation, seq=2, role="assistant", status="streaming", reply_to=question
    )
    sync_redis().set(f"reply:{reply.pk}:text", "Half a sen")

    # Still young: another task may be streaming it, so a duplicate leaves it alone.
    assert services.reply_start(visitor_message_id=question.pk, model="m") is None
    reply.refresh_from_db()
    assert reply.status == Message.Status.STREAMING

    Message.objects.filter(pk=reply.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.reply_start(visitor_message_id=question.pk, model="m") is None
    reply.refresh_from_db()
    assert reply.status == Message.Status.FAILED
    assert reply.error_code == "worker_lost"
    assert reply.text == "Half a sen"
    assert Message.objects.filter(conversation=conversation).count() == 2


def _streaming_reply(site, *, age: timedelta) -> Message:
    conversation = Conversation.objects.create(site=site, visitor_hash="y" * 64, seq=2)
    question = Message.objects.create(
        conversation=conversation, seq=1, role="visitor", text="hi", client_id="q"
    )
    reply = Message.objects.create(
        conversation=conversation, seq=2, role="assistant", status="streaming", reply_to=question
    )
    Message.objects.filter(pk=reply.pk).update(created_at=timezone.now() - age)
    return reply


def test_the_sweeper_fails_only_replies_no_worker_can_still_be_on(transactional_db, site):
    young = _streaming_reply(site, age=timedelta(seconds=5))
    old = _streaming_reply(site, age=timedelta(hours=2))
    sync_redis().set(f"reply:{old.pk}:text", "Partly said")

    assert services.replies_fail_stale() == 1
    old.refresh_from_db()
    young.refresh_from_db()
    assert (old.status, old.error_code, old.text) == ("failed", "worker_lost", "Partly said")
    assert young.status == Message.Status.STREAMING
    assert services.replies_fail_stale() == 0


def test_a_reply_keeps_its_first_outcome(transactional_db, site):
    reply = _streaming_reply(site, age=timedelta(seconds=1))
    services.reply_complete(
        reply_id=reply.pk,
        text="The answer",
        prompt_tokens=10,
        completion_tokens=2,
        usage_estimated=False,
        time_to_first_token_ms=100,
        total_time_ms=500,
        verdict=Verdict(PASSED, provider="offline"),
        decision=handoff.NONE,
    )
    # A late second outcome (a redelivered task, a slow worker) changes nothing.
    late = services.reply_fail(
        reply_id=reply.pk,
        text_so_far="The",
        error_code="worker_lost",
        detail="lost",
        time_to_first_token_ms=None,
        total_time_ms=900,
    )
    reply.refresh_from_db()
    assert (reply.status, reply.text, reply.total_time_ms) == ("complete", "The answer", 500)
    assert late.status == Message.Status.COMPLETE


def test_manage_py_ignores_the_services_file_of_a_launcher_that_died(tmp_path, monkeypatch):
    from supportbot.local import paths

    monkeypatch.setenv("SUPPORTBOT_VAR_DIR", str(tmp_path))
    paths.write_state({"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x"})
    assert paths.read_state() == {"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x"}
    state = paths.state_file()
    state.write_text(state.read_text().replace(str(os.getpid()), "999999"))
    assert paths.read_state() == {}
