"""Fixtures: the real stack (uvicorn, a Celery worker, PostgreSQL, Redis) and a
scripted model server on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from tests import stack as stack_module
from tests.scripted_llm import ModerationScript, Script, ScriptedLLMServer
from tests.visitor import ORIGIN, Visitor

# Short enough that fault tests finish quickly, long enough for a loaded CI machine.
TEST_SERVER_SETTINGS = {
    "LLM_CONNECT_TIMEOUT": "2",
    "LLM_READ_TIMEOUT": "2",
    "LLM_FIRST_TOKEN_TIMEOUT": "4",
    "LLM_MAX_RETRIES": "2",
    "LLM_RETRY_MAX_WAIT": "3",
    "REPLY_TIME_LIMIT": "30",
    "STREAM_COALESCE_MS": "40",
    "RATE_VISITOR_MESSAGES_PER_MINUTE": "20",
    "RATE_ADDRESS_MESSAGES_PER_MINUTE": "100000",
    "RATE_CONVERSATIONS_PER_HOUR": "100000",
    # Sites set to moderation provider "api" use the scripted server's /moderations;
    # "auto" and "offline" sites use the offline moderator.
    "MODERATION_TIMEOUT": "2",
    "MODERATION_MAX_RETRIES": "1",
}


# What the model says when a test does not queue a script of its own.
DEFAULT_SCRIPT = Script(reply_words=12, token_interval=0.005)


@dataclass
class LiveStack:
    http_url: str
    ws_url: str
    asgi: stack_module.AsgiServer
    worker: stack_module.CeleryWorker
    env: dict[str, str]
    log_dir: Path

    def logs(self) -> str:
        return "\n".join(
            f"----- {child.name} log -----\n{child.log()[-6000:]}"
            for child in (self.asgi, self.worker)
        )


@pytest.fixture(scope="session")
def llm_server():
    server = ScriptedLLMServer(default=DEFAULT_SCRIPT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def llm(llm_server):
    llm_server.clear()
    llm_server.default = DEFAULT_SCRIPT
    llm_server.moderation_default = ModerationScript()
    return llm_server


def _clean_redis() -> None:
    from conversations.redis_clients import sync_redis

    client = sync_redis()
    for pattern in ("rl:*", "reply:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, llm_server):
    """A uvicorn server and a Celery worker on the test database."""
    with stack_module.log_dir() as logs:
        env = stack_module.server_env(
            database=settings.DATABASES["default"],
            redis_url=settings.REDIS_URL,
            llm_base_url=llm_server.base_url,
            MODERATION_BASE_URL=llm_server.base_url,
            **TEST_SERVER_SETTINGS,
        )
        worker = stack_module.CeleryWorker(env, logs)
        try:
            asgi = stack_module.AsgiServer(env, logs)
        except Exception:
            worker.stop()
            raise
        live = LiveStack(asgi.url, asgi.ws_url, asgi, worker, env, logs)
        yield live
        asgi.stop()
        worker.stop()


@pytest.fixture
def stack(live_stack, transactional_db, request):
    """The live stack, with rate-limit counters reset; dumps server logs on failure."""
    _clean_redis()
    yield live_stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(live_stack.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def site(transactional_db):
    """A site whose answers stream freely and are moderated (offline) at the end:
    the streaming tests count deltas token by token. Moderation tests make their
    own sites in the default `gate` mode."""
    from conversations.models import Site

    return Site.objects.create(
        name="Test shop",
        allowed_origins=[ORIGIN],
        system_prompt="You are the Test shop's support assistant.",
        temperature=0.2,
        max_tokens=300,
        moderation_mode=Site.ModerationMode.AFTER,
        moderation_provider=Site.ModerationProvider.OFFLINE,
    )


@pytest.fixture
def visitor(stack, site):
    return Visitor(stack.http_url, stack.ws_url, site.public_key)
