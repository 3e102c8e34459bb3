"""Rate limits kept in Redis, shared by every server process (docs/protocol.md, Limits).

Three kinds of limit, all checked by one Lua script so that a burst of concurrent
clients cannot slip between a read and a write and overshoot:

- fixed windows (messages per minute, conversations per hour): a counter per window;
  attempts count even when refused;
- a site's concurrent streaming replies: a sorted set of holders, each scored with
  the time its slot expires; a visitor message takes a slot when it is admitted and
  the worker gives it back when the reply ends, whatever the ending. The expiry is
  the backstop for a holder that died without giving it back;
- a site's tokens per UTC day (a cost cap): a counter the worker adds each reply's
  usage to; read-only here. It is seeded from the database when Redis lost it, so a
  Redis restart does not reset the budget.

Per-site values: a Site field left empty (NULL) takes the deployment default from
settings; 0, in a field or a default, means no limit.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Sum
from django.db.models.functions import Coalesce

from conversations.redis_clients import async_redis, sync_redis

if TYPE_CHECKING:
    from conversations.models import Message

logger = logging.getLogger(__name__)

DAY = 86_400
# A streaming slot gives no hint of when it frees; replies usually end within
# seconds, so a client is told to come back soon rather than after the slot's expiry.
SLOT_RETRY_AFTER = 5

# What a refused client is told, by the name of the limit that refused it.
DETAILS = {
    "visitor_messages": "You are sending messages too quickly; wait a moment.",
    "address_messages": "You are sending messages too quickly; wait a moment.",
    "resends": "You are sending messages too quickly; wait a moment.",
    "site_messages": "This site is receiving too many messages right now; wait a moment.",
    "site_replies": "The assistant is answering too many visitors right now; "
    "try again in a few seconds.",
    "site_tokens": "The assistant has used this site's budget for today; "
    "try again after midnight UTC.",
    "address_conversations": "Too many conversations from this address; try again later.",
    "site_conversations": "This site is starting too many conversations; try again later.",
}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds until the limit lets this client through; 0 when allowed
    limit: str = ""  # the name of the limit that refused (a key of DETAILS)
    slot: StreamSlot | None = None  # the streaming slot taken, to give back if unused

    @property
    def detail(self) -> str:
        return DETAILS.get(self.limit, "Too many requests; wait a moment.")


@dataclass(frozen=True)
class Window:
    """At most `limit` attempts per fixed window of `seconds`; None: no limit."""

    scope: str
    subject: str
    limit: int | None
    seconds: int
    name: str


@dataclass(frozen=True)
class TokenCap:
    """A site's model tokens (prompt + completion) per UTC day; None: no limit."""

    site_id: int
    limit: int | None
    name: str = "site_tokens"


@dataclass(frozen=True)
class StreamSlot:
    """One of a site's `limit` concurrent replies, held by one visitor message."""

    site_id: int
    holder: str  # stream_holder(conversation_id, client_id)
    limit: int | None
    ttl: int | None = None  # seconds; None: slot_ttl()
    name: str = "site_replies"


Check = Window | TokenCap | StreamSlot

# Checks run in order and stop at the first refusal. Caps go first because they
# change nothing: the script can return "seed me" before touching any counter.
_ORDER = {TokenCap: 0, Window: 1, StreamSlot: 2}

_SCRIPT = """
local now = tonumber(ARGV[1])
local checks = cjson.decode(ARGV[2])
for i, check in ipairs(checks) do
  local key = KEYS[i]
  if check.kind == "cap" then
    local used = redis.call("GET", key)
    if not used then return {-1, i, 0} end
    if tonumber(used) >= check.limit then return {0, i, check.retry} end
  elseif check.kind == "window" then
    local count = redis.call("INCR", key)
    if count == 1 then redis.call("EXPIRE", key, check.ttl) end
    if count > check.limit then return {0, i, check.retry} end
  else
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now)
    local held = redis.call("ZSCORE", key, check.holder)
    if not held and redis.call("ZCARD", key) >= check.limit then
      return {0, i, check.retry}
    end
    redis.call("ZADD", key, now + check.ttl, check.holder)
    redis.call("EXPIRE", key, check.ttl + 60)
  end
end
return {1, 0, 0}
"""

# A reply's usage is added only to a counter that exists: a missing one is seeded
# from the database, which already holds this reply.
_ADD_TOKENS = """
if redis.call("EXISTS", KEYS[1]) == 1 then
  return redis.call("INCRBY", KEYS[1], ARGV[1])
end
return false
"""


# --- Per-site values --------------------------------------------------------------


def site_limit(value: int | None, default: int) -> int | None:
    """A site's limit: its own value, else the default; None means no limit."""
    chosen = default if value is None else value
    return chosen if chosen > 0 else None


@dataclass(frozen=True)
class MessageLimits:
    site_id: int
    messages_per_minute: int | None
    concurrent_replies: int | None
    tokens_per_day: int | None
    bot_answers: bool  # only then does a message cost a streaming slot and tokens


def message_limits(conversation_id: object) -> MessageLimits:
    """The limits on a visitor message, read fresh so an admin's change applies at once."""
    from conversations.models import Conversation
    from conversations.services import bot_answers

    conversation = Conversation.objects.select_related("site").get(pk=conversation_id)
    site = conversation.site
    return MessageLimits(
        site_id=site.pk,
        messages_per_minute=site_limit(
            site.rate_messages_per_minute, settings.RATE_SITE_MESSAGES_PER_MINUTE
        ),
        concurrent_replies=site_limit(
            site.rate_concurrent_replies, settings.RATE_SITE_CONCURRENT_REPLIES
        ),
        tokens_per_day=site_limit(site.rate_tokens_per_day, settings.RATE_SITE_TOKENS_PER_DAY),
        bot_answers=bot_answers(conversation),
    )


# --- Checking ------------------------------------------------------------------------


def stream_holder(conversation_id: object, client_id: str) -> str:
    # client_id is unique per conversation, and the worker knows both.
    return f"{conversation_id}:{client_id}"


def slot_ttl() -> int:
    """A slot outlives any reply (REPLY_TIME_LIMIT) plus a queue wait; by then the
    broker has redelivered a dead worker's task, which gives the slot back."""
    return settings.REPLY_TIME_LIMIT + 120


def _slots_key(site_id: int) -> str:
    return f"rl:streams:{site_id}"


def _tokens_key(site_id: int, day: int) -> str:
    return f"rl:tokens:{site_id}:{day}"


def _until_tomorrow(now: float) -> int:
    # Unix time has no leap seconds: every UTC day is exactly DAY seconds long.
    return DAY - int(now) % DAY


def _plan(checks: list[Check], now: float) -> tuple[list[Check], list[str], str]:
    """The checks in script order (unlimited ones dropped), their keys and arguments."""
    active = sorted((c for c in checks if c.limit is not None), key=lambda c: _ORDER[type(c)])
    keys: list[str] = []
    specs: list[dict] = []
    for check in active:
        if isinstance(check, Window):
            bucket = int(now) // check.seconds
            keys.append(f"rl:{check.scope}:{check.subject}:{bucket}")
            retry = check.seconds - int(now) % check.seconds
            specs.append(
                {"kind": "window", "limit": check.limit, "ttl": check.seconds + 1, "retry": retry}
            )
        elif isinstance(check, TokenCap):
            keys.append(_tokens_key(check.site_id, int(now) // DAY))
            specs.append({"kind": "cap", "limit": check.limit, "retry": _until_tomorrow(now)})
        else:
            keys.append(_slots_key(check.site_id))
            specs.append(
                {
                    "kind": "slot",
                    "limit": check.limit,
                    "holder": check.holder,
                    "ttl": check.ttl or slot_ttl(),
                    "retry": SLOT_RETRY_AFTER,
                }
            )
    return active, keys, json.dumps(specs)


def _verdict(active: list[Check], answer: list[int]) -> Verdict:
    allowed, index, retry = (int(value) for value in answer)
    if allowed == 1:
        slot = next((c for c in active if isinstance(c, StreamSlot)), None)
        return Verdict(True, 0, slot=slot)
    return Verdict(False, max(retry, 1), limit=active[index - 1].name)


def check(checks: list[Check]) -> Verdict:
    """Count this attempt against every limit, in one atomic step."""
    for _ in range(3):
        now = time.time()
        active, keys, specs = _plan(checks, now)
        if not active:
            return Verdict(True, 0)
        answer = sync_redis().register_script(_SCRIPT)(keys=keys, args=[repr(now), specs])
        if int(answer[0]) != -1:
            return _verdict(active, answer)
        _seed_tokens(active[int(answer[1]) - 1], now)
    raise RuntimeError("the token counter could not be seeded")


async def acheck(checks: list[Check]) -> Verdict:
    """check() for the event loop."""
    for _ in range(3):
        now = time.time()
        active, keys, specs = _plan(checks, now)
        if not active:
            return Verdict(True, 0)
        script = async_redis().register_script(_SCRIPT)
        answer = await script(keys=keys, args=[repr(now), specs])
        if int(answer[0]) != -1:
            return _verdict(active, answer)
        await sync_to_async(_seed_tokens, thread_sensitive=False)(active[int(answer[1]) - 1], now)
    raise RuntimeError("the token counter could not be seeded")


def _seed_tokens(cap: Check, now: float) -> None:
    """Start today's counter from the usage already stored (Redis lost it, or the day
    just began)."""
    assert isinstance(cap, TokenCap)
    day = int(now) // DAY
    used = tokens_used(cap.site_id, day)
    sync_redis().set(_tokens_key(cap.site_id, day), used, nx=True, ex=_until_tomorrow(now) + 3600)


def tokens_used(site_id: int, day: int) -> int:
    """Tokens of the site's replies that ended on this UTC day (days since the epoch)."""
    from conversations.models import Message

    start = datetime.fromtimestamp(day * DAY, tz=UTC)
    totals = Message.objects.filter(
        conversation__site_id=site_id,
        role=Message.Role.ASSISTANT,
        completed_at__gte=start,
        completed_at__lt=start + timedelta(days=1),
    ).aggregate(
        prompt=Coalesce(Sum("prompt_tokens"), 0), completion=Coalesce(Sum("completion_tokens"), 0)
    )
    return totals["prompt"] + totals["completion"]


# --- Giving back and counting ---------------------------------------------------------


def release(slot: StreamSlot | None) -> None:
    if slot is not None:
        sync_redis().zrem(_slots_key(slot.site_id), slot.holder)


async def arelease(slot: StreamSlot | None) -> None:
    if slot is not None:
        await async_redis().zrem(_slots_key(slot.site_id), slot.holder)


def release_for_message(*, site_id: int, conversation_id: object, client_id: str | None) -> None:
    """Give back the slot a visitor message took, if any (idempotent)."""
    if client_id is None:
        return
    try:
        sync_redis().zrem(_slots_key(site_id), stream_holder(conversation_id, client_id))
    except Exception:  # the slot expires on its own (slot_ttl)
        logger.warning("could not give back the streaming slot of %s", client_id)


def reply_closed(reply: Message) -> None:
    """A reply ended (complete, failed, withdrawn, taken over, lost): give back its
    question's streaming slot and add its tokens to the site's day. Runs after the
    commit; never raises, so storing the reply cannot fail because of it."""
    from conversations.models import Message

    try:
        question = (
            Message.objects.filter(pk=reply.reply_to_id)
            .values_list("client_id", "conversation__site_id")
            .first()
        )
        if question is None:
            return
        client_id, site_id = question
        release_for_message(
            site_id=site_id, conversation_id=reply.conversation_id, client_id=client_id
        )
        spent = (reply.prompt_tokens or 0) + (reply.completion_tokens or 0)
        if spent and reply.completed_at is not None:
            day = math.floor(reply.completed_at.timestamp()) // DAY
            sync_redis().register_script(_ADD_TOKENS)(
                keys=[_tokens_key(site_id, day)], args=[spent]
            )
    except Exception:
        # The slot expires on its own; the tokens are missing from the counter until
        # it is next seeded from the database (it lives until the day ends).
        logger.warning("could not account for the end of reply %s", reply.pk, exc_info=True)


# --- The single-window helpers the HTTP view and consumers used first ---------------


def hit(scope: str, subject: str, *, limit: int, window: int) -> Verdict:
    return check([Window(scope, subject, limit, window, name=scope)])


async def ahit(scope: str, subject: str, *, limit: int, window: int) -> Verdict:
    return await acheck([Window(scope, subject, limit, window, name=scope)])
