"""Settings come from the environment, fail loudly, and are all documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.stack import ROOT


def _settings_with(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-c", "import supportbot.settings"],
        cwd=ROOT,
        env={**base, "SECRET_KEY": "a-secret-key-for-this-test-only-0123456789", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_environment_variable_read_is_listed_in_env_example():
    sources = [ROOT / "supportbot" / "settings.py", ROOT / "supportbot" / "launcher.py"]
    sources += sorted((ROOT / "supportbot" / "local").glob("*.py"))
    read = set()
    for path in sources:
        text = path.read_text()
        read |= set(re.findall(r'env_(?:str|bool|int|float|list|url)\(\s*"([A-Z_]+)"', text))
        read |= set(re.findall(r'environ(?:\.get)?[\[(]\s*"([A-Z_]+)"', text))
    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert len(read) > 30
    assert read - listed == set()


def test_a_bad_value_stops_start_up_naming_the_variable():
    for name, value in [
        ("LLM_READ_TIMEOUT", "soon"),
        ("DEBUG", "perhaps"),
        ("REDIS_URL", "http://not-redis"),
        ("DATABASE_URL", "mysql://x/y"),
        ("RATE_VISITOR_MESSAGES_PER_MINUTE", "0"),
    ]:
        result = _settings_with(**{name: value})
        assert result.returncode != 0, name
        assert "ImproperlyConfigured" in result.stderr and name in result.stderr, result.stderr


def test_it_needs_a_secret_key_unless_debugging():
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    env["SUPPORTBOT_VAR_DIR"] = str(ROOT / "var" / "nonexistent-for-test")
    run = [sys.executable, "-c", "import supportbot.settings"]
    refused = subprocess.run(
        run, cwd=ROOT, env={**env, "DEBUG": "0"}, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr
    debugging = subprocess.run(
        run, cwd=ROOT, env={**env, "DEBUG": "1"}, capture_output=True, text=True
    )
    assert debugging.returncode == 0, debugging.stderr


def test_an_api_key_without_a_base_url_means_the_openai_api():
    probe = "from django.conf import settings as s; print(s.LLM_BASE_URL, s.LLM_MODEL)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OPENAI_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="supportbot.settings",
        SECRET_KEY="a-secret-key-for-this-test-only-0123456789",
        OPENAI_API_KEY="sk-test-not-a-real-key",
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.split() == ["https://api.openai.com/v1", "gpt-4o-mini"], result.stderr
    assert "sk-test" not in result.stdout + result.stderr


def test_deployments_on_one_redis_server_do_not_hear_each_other():
    # Redis pub/sub ignores the database number, so the channel layer's names must
    # differ by it (the agents' queue of one deployment must not reach another's).
    def prefix(**env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", "import supportbot.settings as s; print(s.CHANNEL_LAYERS["
             "'default']['CONFIG']['prefix'])"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "SECRET_KEY": "a-secret-key-for-this-test-only-0123456789",
                 "CHANNEL_LAYER_PREFIX": "", **env},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    one = prefix(REDIS_URL="redis://127.0.0.1:6379/1")
    two = prefix(REDIS_URL="redis://127.0.0.1:6379/2")
    assert one != two
    assert prefix(REDIS_URL="redis://127.0.0.1:6379/1", CHANNEL_LAYER_PREFIX="shop.") == "shop."
