"""Settings for the test process: the project's own, with safe defaults for a test run.

The servers the tests start (ASGI, Celery) run supportbot.settings with an
environment built by tests/stack.py, so they are configured exactly as in production.
PostgreSQL and Redis are the ones at DATABASE_URL / REDIS_URL when set, and
embedded ones started for this run otherwise, so the suite passes on a machine
with nothing installed but Python.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("SECRET_KEY", "test-only-insecure-secret-key-0123456789")
os.environ.setdefault("DEBUG", "0")
# Tests never talk to a real model API, nor to the services of a running `make run`.
for _name in ("LLM_BASE_URL", "LLM_API_KEY", "OPENAI_API_KEY", "LLM_MODEL"):
    os.environ.pop(_name, None)
os.environ["SUPPORTBOT_VAR_DIR"] = tempfile.mkdtemp(prefix="supportbot-test-var-")
atexit.register(shutil.rmtree, os.environ["SUPPORTBOT_VAR_DIR"], ignore_errors=True)

if not os.environ.get("DATABASE_URL"):
    from tests import embedded

    os.environ["DATABASE_URL"] = embedded.start_postgres()

# TEST_REDIS_URL lets parallel runs (or a developer's running stack) use a Redis
# database of their own, so they do not consume each other's tasks.
if os.environ.get("TEST_REDIS_URL"):
    os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
elif not os.environ.get("REDIS_URL"):
    from tests import embedded

    os.environ["REDIS_URL"] = embedded.start_redis()

from supportbot.settings import *  # noqa: E402, F403

# Parallel test runs on one machine each need a database of their own.
if os.environ.get("TEST_DB_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DB_NAME"]}  # noqa: F405
