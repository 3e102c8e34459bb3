"""Settings for the test process: the project's own, with safe defaults for a test run.

The servers the tests start (ASGI, Celery) run supportbot.settings with an
environment built by tests/stack.py, so they are configured exactly as in production.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-only-insecure-secret-key-0123456789")
os.environ.setdefault("DEBUG", "0")
# A Redis database of its own, so a test run and a developer's running stack do not
# consume each other's tasks.
os.environ["REDIS_URL"] = (
    os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
)

from supportbot.settings import *  # noqa: E402, F403

# Parallel test runs on one machine each need a database of their own.
if os.environ.get("TEST_DB_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DB_NAME"]}  # noqa: F405
