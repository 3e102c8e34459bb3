"""Per-site limits (messages per minute, conversations per hour, concurrent replies,
tokens per day) hold under bursts of concurrent clients, on the real stack.

The server runs with high defaults (tests/conftest.py); each test sets a site's own
limits low in the database, which the servers read on every message or request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import httpx
from django.utils import timezone

from conversations import ratelimit, services
from conversations.models import Conversation, Message, Site
from conversations.redis_clients import sync_redis
from tests.protocol_helpers import away_from_window_edge, is_assistant_done
from tests.scripted_llm import Script
from tests.visitor import ORIGIN, Socket, Visitor, run

BURST = 30


def _site(name: str, **limits: int) -> Site:
    return Site.objects.create(
        name=name,
        allowed_origins=[ORIGIN],
        moderation_mode=Site.ModerationMode.AFTER,
        moderation_provider=Site.ModerationProvider.OFFLINE,
        **limits,
    )


def _visitors(stack, site: Site, n: int) -> list[tuple[Visitor, dict[str, Any]]]:
    """n visitors of the site, each with a conversation of its own."""
    visitors = [Visitor(stack.http_url, stack.ws_url, site.public_key) for _ in range(n)]
    return [(visitor, visitor.start()) for visitor in visitors]


async def _answer_to(socket: Socket, client_id: str, timeout: float = 20) -> dict[str, Any]:
    """The server's answer to one message: its echo (it was admitted) or an error."""
    events = await socket.until(
        lambda e: (
            e["type"] == "error"
            or (e["type"] == "message" and e["message"].get("client_id") == client_id)
        ),
        timeout,
    )
    return events[-1]


def _is_echo(answer: dict[str, Any]) -> bool:
    return answer["type"] == "message"


async def _burst(
    pairs: list[tuple[Visitor, dict[str, Any]]], *, until_done: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every visitor sends one message at the same moment; each one's answer, and
    (with `until_done`) every admitted message's reply waited for."""
    async with AsyncExitStack() as stack:
        sockets = await asyncio.gather(
            *(stack.enter_async_context(visitor.socket(conv)) for visitor, conv in pairs)
        )
        client_ids = [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(sockets))]
        await asyncio.gather(
            *(s.say("Where is my order?", c) for s, c in zip(sockets, client_ids, strict=True))
        )
        answers = await asyncio.gather(
            *(_answer_to(s, c) for s, c in zip(sockets, client_ids, strict=True))
        )
        if until_done:
            admitted = [s for s, a in zip(sockets, answers, strict=True) if _is_echo(a)]
            await asyncio.gather(*(s.until(is_assistant_done, 30) for s in admitted))
    return answers, client_ids


async def _say_and_answer(visitor: Visitor, conversation: dict[str, Any], text: str):
    async with visitor.socket(conversation) as socket:
        client_id = await socket.say(text)
        answer = await _answer_to(socket, client_id)
        if _is_echo(answer):
            _, done = await socket.reply(timeout=30)
            return answer, done
        return answer, None


async def _admitted_soon(socket: Socket, within: float = 3.0) -> dict[str, Any]:
    """A new message of this socket's, sent every quarter second until one is
    admitted or `within` seconds pass; the last answer."""
    deadline = time.monotonic() + within
    while True:
        answer = await _answer_to(socket, await socket.say("anyone free?"))
        if _is_echo(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.25)


def _refusals(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    refused = [a for a in answers if not _is_echo(a)]
    assert all(a["code"] == "rate_limited" for a in refused), refused
    return refused


# --- Messages per minute, per site ----------------------------------------------------


def test_a_burst_of_clients_gets_exactly_the_sites_messages_per_minute(stack, llm):
    site = _site("Busy shop", rate_messages_per_minute=7)
    other = _site("Quiet shop")
    pairs = _visitors(stack, site, BURST)
    bystander = _visitors(stack, other, 1)[0]
    away_from_window_edge(60, margin=15)

    answers, client_ids = run(_burst(pairs, until_done=True))

    admitted = [c for c, a in zip(client_ids, answers, strict=True) if _is_echo(a)]
    refused = _refusals(answers)
    assert len(admitted) == 7, f"{len(admitted)} of {BURST} admitted"
    assert len(refused) == BURST - 7
    for error in refused:
        assert error["limit"] == "site_messages"
        assert isinstance(error["retry_after"], int) and 1 <= error["retry_after"] <= 60
        assert error["client_id"] in client_ids
    # Refused means not stored: only the admitted messages exist, each answered once.
    stored = Message.objects.filter(conversation__site=site, role="visitor")
    assert sorted(stored.values_list("client_id", flat=True)) == sorted(admitted)
    assert Message.objects.filter(conversation__site=site, role="assistant").count() == 7
    # The same minute, another site's visitor is answered.
    echo, done = run(_say_and_answer(*bystander, "Hello from next door"))
    assert _is_echo(echo) and done["status"] == "complete"


# --- Concurrent streaming replies, per site --------------------------------------------


def test_a_burst_gets_exactly_the_sites_concurrent_replies(stack, llm):
    # Replies of about 3 s, so every message of the burst arrives while they stream.
    llm.default = Script(reply_words=30, token_interval=0.1)
    site = _site("Streaming shop", rate_concurrent_replies=4)
    pairs = _visitors(stack, site, BURST)

    answers, client_ids = run(_burst(pairs, until_done=True))

    admitted = [c for c, a in zip(client_ids, answers, strict=True) if _is_echo(a)]
    refused = _refusals(answers)
    assert len(admitted) == 4, f"{len(admitted)} of {BURST} admitted"
    assert {e["limit"] for e in refused} == {"site_replies"}
    assert {e["retry_after"] for e in refused} == {ratelimit.SLOT_RETRY_AFTER}
    replies = Message.objects.filter(conversation__site=site, role="assistant")
    assert sorted(replies.values_list("status", flat=True)) == ["complete"] * 4
    stored = Message.objects.filter(conversation__site=site, role="visitor")
    assert sorted(stored.values_list("client_id", flat=True)) == sorted(admitted)

    # All four ended: the slots are free again for a second burst.
    llm.default = Script(reply_words=5)
    answers, _ = run(_burst(pairs[:4], until_done=True))
    assert all(_is_echo(a) for a in answers), answers


def test_the_reply_slot_frees_when_a_reply_finishes_and_when_it_fails(stack, llm):
    site = _site("One at a time", rate_concurrent_replies=1)
    (first, first_conv), (second, second_conv) = _visitors(stack, site, 2)
    llm.enqueue(Script(reply_words=20, token_interval=0.1), match="slow one")
    llm.enqueue(Script(status=400), match="broken one")

    async def scenario():
        async with first.socket(first_conv) as a, second.socket(second_conv) as b:
            slow = await a.say("the slow one")
            assert _is_echo(await _answer_to(a, slow))
            await a.until(lambda e: e["type"] == "delta")  # streaming now
            busy = await b.say("me too")
            refused = await _answer_to(b, busy)
            _, finished = await a.reply()
            # Finished: the same message (never stored) is admitted now.
            await b.say("me too", busy)
            after_done = await _answer_to(b, busy)
            await b.reply()
            broken = await a.say("the broken one")
            assert _is_echo(await _answer_to(a, broken))
            failed = await a.until(lambda e: e["type"] == "error", 20)
            after_failure = await _answer_to(b, await b.say("and now?"))
            await b.reply()
            # Handed to a person before any reply is written: the task gives it back
            # as it ends, just after the visitor hears of the handoff.
            asks = await a.say("Can I talk to a human please?")
            await a.until(lambda e: e["type"] == "status" and e["status"] == "waiting")
            after_handoff = await _admitted_soon(b)
            if _is_echo(after_handoff):
                await b.reply()
            return refused, finished, after_done, failed[-1], after_failure, after_handoff, asks

    refused, finished, after_done, failed, after_failure, after_handoff, asks = run(scenario())
    assert (refused.get("code"), refused.get("limit")) == ("rate_limited", "site_replies")
    assert refused["retry_after"] == ratelimit.SLOT_RETRY_AFTER
    assert finished["status"] == "complete"
    assert _is_echo(after_done)
    assert failed["code"] == "reply_failed"
    assert _is_echo(after_failure)
    assert _is_echo(after_handoff)
    assert not Message.objects.filter(reply_to__client_id=asks, role="assistant").exists()


def test_a_reply_slot_expires_when_its_holder_dies(stack):
    site_id = 10**9 + uuid.uuid4().int % 10**6  # no real site: nothing gives it back

    def take(holder: str, ttl: int = 1) -> ratelimit.Verdict:
        return ratelimit.check([ratelimit.StreamSlot(site_id, holder, limit=1, ttl=ttl)])

    assert take("dead-holder").allowed
    refused = take("waiting")
    assert (refused.allowed, refused.limit) == (False, "site_replies")
    time.sleep(1.5)
    assert take("waiting").allowed


def test_a_reply_whose_worker_was_lost_gives_its_slot_back(stack):
    site = _site("Lost worker shop")
    conversation = Conversation.objects.create(site=site, visitor_hash="z" * 64, seq=2)
    question = Message.objects.create(
        conversation=conversation, seq=1, role="visitor", text="hi", client_id="q-1"
    )
    reply = Message.objects.create(
        conversation=conversation, seq=2, role="assistant", status="streaming", reply_to=question
    )
    holder = ratelimit.stream_holder(conversation.pk, "q-1")
    assert ratelimit.check([ratelimit.StreamSlot(site.pk, holder, limit=1)]).allowed
    other = ratelimit.StreamSlot(site.pk, "another:q", limit=1)
    assert not ratelimit.check([other]).allowed

    # Its worker died long ago; the sweep fails it (the path every lost reply takes).
    Message.objects.filter(pk=reply.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.replies_fail_stale() == 1

    assert ratelimit.check([other]).allowed


# --- Tokens per day, per site ---------------------------------------------------------


def test_the_daily_token_cap_refuses_messages_once_the_sites_usage_reaches_it(stack, llm):
    site = _site("Thrifty shop", rate_tokens_per_day=100)
    other = _site("Other shop", rate_tokens_per_day=100)
    (visitor, conversation), (bystander, bystander_conv) = (
        _visitors(stack, site, 1)[0],
        _visitors(stack, other, 1)[0],
    )
    away_from_window_edge(ratelimit.DAY, margin=30)  # the whole test in one UTC day
    llm.enqueue(
        Script(
            tokens=["Sure."],
            usage={"prompt_tokens": 70, "completion_tokens": 40, "total_tokens": 110},
        ),
        match="first",
    )

    echo, done = run(_say_and_answer(visitor, conversation, "first question"))
    assert _is_echo(echo) and done["status"] == "complete"
    refused, _ = run(_say_and_answer(visitor, conversation, "second question"))
    assert (refused.get("code"), refused.get("limit")) == ("rate_limited", "site_tokens")
    until_midnight = ratelimit.DAY - int(time.time()) % ratelimit.DAY
    assert abs(refused["retry_after"] - until_midnight) <= 3, refused
    assert not Message.objects.filter(text="second question").exists()

    # Another site's budget is its own.
    echo, done = run(_say_and_answer(bystander, bystander_conv, "a question elsewhere"))
    assert _is_echo(echo) and done["status"] == "complete"

    # Redis losing its counters does not reset the budget: it is rebuilt from the
    # usage stored with each answer.
    for key in sync_redis().scan_iter("rl:tokens:*"):
        sync_redis().delete(key)
    refused, _ = run(_say_and_answer(visitor, conversation, "third question"))
    assert (refused.get("code"), refused.get("limit")) == ("rate_limited", "site_tokens")

    # An administrator raising the cap lets the site answer again, without a restart.
    Site.objects.filter(pk=site.pk).update(rate_tokens_per_day=1000)
    echo, done = run(_say_and_answer(visitor, conversation, "fourth question"))
    assert _is_echo(echo) and done["status"] == "complete"


# --- Conversations per hour, per site --------------------------------------------------


def test_a_burst_of_new_conversations_gets_exactly_the_sites_hourly_limit(stack):
    site = _site("Popular shop", rate_conversations_per_hour=6)
    other = _site("Unknown shop")
    away_from_window_edge(3600, margin=15)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/conversations",
                        json={"site_key": site.public_key},
                        headers={"Origin": ORIGIN},
                    )
                    for _ in range(BURST)
                )
            )

    responses = run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 6, statuses
    assert statuses.count(429) == BURST - 6, statuses
    for limited in (r for r in responses if r.status_code == 429):
        error = limited.json()["error"]
        assert (error["code"], error["limit"]) == ("rate_limited", "site_conversations")
        assert 1 <= error["retry_after"] <= 3600
        assert limited.headers["Retry-After"] == str(error["retry_after"])
    assert Conversation.objects.filter(site=site).count() == 6
    # The other site, the same hour, from the same address.
    assert Visitor(stack.http_url, stack.ws_url, other.public_key).start()["conversation"]


# --- Administration ---------------------------------------------------------------------


def test_a_superuser_sets_a_sites_limits_in_the_admin(client, django_user_model):
    from django.urls import reverse

    site = _site("Admin shop")
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-123456")
    client.force_login(admin)
    url = reverse("admin:conversations_site_change", args=[site.pk])
    form = client.get(url).context["adminform"].form
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is False:
            continue  # an unticked checkbox is absent from a real POST
        data[name] = "" if value is None else value
    data.update(rate_messages_per_minute="12", rate_concurrent_replies="0")

    response = client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    site.refresh_from_db()
    assert (site.rate_messages_per_minute, site.rate_concurrent_replies) == (12, 0)
    assert site.rate_tokens_per_day is None  # left empty: the deployment's default
    assert ratelimit.site_limit(site.rate_concurrent_replies, 256) is None  # 0: no limit
    assert ratelimit.site_limit(site.rate_tokens_per_day, 5000) == 5000
    assert ratelimit.site_limit(site.rate_messages_per_minute, 3000) == 12
