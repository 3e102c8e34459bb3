"""Settings, read from the environment only (see .env.example and docs/operations.md)."""

from __future__ import annotations

import warnings
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from redis.connection import parse_url as parse_redis_url

from conversations.redis_clients import retry_policy
from supportbot.env import (
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)
from supportbot.local.paths import read_local_secret_key, read_state

BASE_DIR = Path(__file__).resolve().parent.parent

# URLs of the embedded services that a running `make run` started, so that
# manage.py from this checkout reaches them; the environment always wins.
_LOCAL = read_state()

DEBUG = env_bool("DEBUG", False)

# `make run` keeps a generated key under var/ so manage.py from the checkout shares it.
SECRET_KEY = env_str("SECRET_KEY") or read_local_secret_key()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Full-text and trigram search for the knowledge base.
    "django.contrib.postgres",
    "channels",
    "conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A view that cannot reach the database answers 503 `unavailable`, not a 500 page.
    "supportbot.unavailable.DatabaseUnavailableMiddleware",
    # Content-Security-Policy on every HTML response (see the Security section).
    "supportbot.security.ContentSecurityPolicyMiddleware",
    # Serves the widget and admin assets from the ASGI server itself, compressed
    # and with far-future caching for hashed names.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "supportbot.urls"
ASGI_APPLICATION = "supportbot.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Security ------------------------------------------------------------------
# Production mode is DEBUG off; docs/operations.md ("Production security") explains
# each choice. `manage.py check --deploy` is clean with the defaults below.

# Session and CSRF cookies travel over HTTPS only. false for a deployment reached
# over plain HTTP (an internal network), where browsers would drop them and the
# admin login would fail.
SECURE_COOKIES = env_bool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Stricter than strict-origin-when-cross-origin: no Referer at all leaves for another
# origin (admin and console URLs hold conversation ids and searches), and same-origin
# requests keep it for Django's HTTPS CSRF check. The widget runs under its host
# page's policy, so this header never reaches it.
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Behind a TLS-terminating proxy that overwrites X-Forwarded-Proto on every request:
# Django then knows which requests came over HTTPS (HSTS, redirects, CSRF origins).
TRUST_X_FORWARDED_PROTO = env_bool("TRUST_X_FORWARDED_PROTO", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUST_X_FORWARDED_PROTO else None
# Redirect plain-HTTP requests to HTTPS here rather than at the proxy; needs
# TRUST_X_FORWARDED_PROTO behind a proxy (or TLS in uvicorn), else every request loops.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Probes that reach the server directly over HTTP are answered, not redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# Sent only on responses to HTTPS requests, so harmless on plain-HTTP deployments.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if SECURE_HSTS_PRELOAD and not (SECURE_HSTS_INCLUDE_SUBDOMAINS and SECURE_HSTS_SECONDS >= 31536000):
    raise ImproperlyConfigured(
        "SECURE_HSTS_PRELOAD needs SECURE_HSTS_INCLUDE_SUBDOMAINS and "
        "SECURE_HSTS_SECONDS of at least 31536000 (the preload list requires both)"
    )
SILENCED_SYSTEM_CHECKS = []
if not SECURE_SSL_REDIRECT:
    # W008 "SECURE_SSL_REDIRECT is not True": TLS usually ends at a proxy, which also
    # redirects HTTP to HTTPS; here it would loop unless the proxy sends
    # X-Forwarded-Proto, and it would break plain-HTTP internal deployments.
    SILENCED_SYSTEM_CHECKS.append("security.W008")
if not SECURE_HSTS_PRELOAD:
    # W021 "SECURE_HSTS_PRELOAD is not True": preloading commits the whole registrable
    # domain and all its subdomains to HTTPS in browsers, hard to undo; it is the
    # domain owner's decision, not a support app's default.
    SILENCED_SYSTEM_CHECKS.append("security.W021")

# --- Data stores -------------------------------------------------------------

DATABASE_URL = env_str(
    "DATABASE_URL", _LOCAL.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/supportbot")
)
DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL)}
# Django's backend with a pool that fails fast while the database is away and
# reconnects within seconds once it is back (supportbot/postgresql/base.py).
DATABASES["default"]["ENGINE"] = "supportbot.postgresql"
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# A connection attempt to an unreachable host (no refusal, just silence) gives up
# after this long; a connect_timeout in DATABASE_URL wins.
DB_CONNECT_TIMEOUT = env_int("DB_CONNECT_TIMEOUT", 5, minimum=1, maximum=60)
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", str(DB_CONNECT_TIMEOUT))
# A connection pool per process (psycopg_pool): ORM calls borrow a connection instead
# of opening one each time, and a burst of concurrent replies in a Celery worker waits
# for a free connection instead of exceeding PostgreSQL's max_connections. 0 turns
# it off (then DB_CONN_MAX_AGE applies; Django cannot pool persistent connections).
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 20, minimum=0, maximum=1000)
if DB_POOL_MAX_SIZE:
    if DATABASES["default"]["CONN_MAX_AGE"]:
        raise ImproperlyConfigured("Set DB_CONN_MAX_AGE to 0 or DB_POOL_MAX_SIZE to 0, not both")
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": min(2, DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env_float("DB_POOL_TIMEOUT", 30.0, minimum=1),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url(
    "REDIS_URL",
    _LOCAL.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    schemes=("redis", "rediss", "unix"),
)

# How long a Redis command waits for Redis to come back (a restart, a failover)
# before it fails: replies keep streaming through a restart instead of failing.
REDIS_RETRY_SECONDS = env_float("REDIS_RETRY_SECONDS", 10.0, minimum=0)

# Redis pub/sub ignores the database number: two deployments (or test runs) on one
# Redis server would hear each other's broadcasts, such as the agents' queue, unless
# their channel names differ. By default they differ by the REDIS_URL database.
CHANNEL_LAYER_PREFIX = env_str(
    "CHANNEL_LAYER_PREFIX", f"supportbot.{parse_redis_url(REDIS_URL).get('db', 0)}."
)

CHANNEL_LAYERS = {
    "default": {
        # The pub/sub layer: one PUBLISH per broadcast and push delivery, which keeps
        # per-delta latency and Redis work low when hundreds of replies stream at once.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Timeouts, so a half-open connection to Redis cannot stall broadcasts.
        "CONFIG": {
            "prefix": CHANNEL_LAYER_PREFIX,
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": 5,
                    "socket_connect_timeout": 5,
                    "health_check_interval": 30,
                    # Reconnect and resend through a Redis restart instead of
                    # failing the broadcast (and with it the reply being streamed).
                    "retry": retry_policy(REDIS_RETRY_SECONDS),
                }
            ],
        },
    }
}

# --- Celery ------------------------------------------------------------------

CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", REDIS_URL, schemes=("redis", "rediss", "unix"))
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "supportbot")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# After losing Redis (a restart), a worker reconnects however long it takes (pauses
# of 2, 4, 6 ... up to 30 s) instead of exiting after 100 attempts; /healthz reports
# it meanwhile.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Replies streaming when the broker connection drops go on (they need Redis for their
# deltas, not the broker connection); cancelling them would fail every reply in
# flight on a Redis restart. Celery 6 changes this default to True.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
REPLY_TIME_LIMIT = env_int("REPLY_TIME_LIMIT", 300, minimum=10)
CELERY_TASK_TIME_LIMIT = REPLY_TIME_LIMIT + 30
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A task whose worker died is redelivered after this many seconds.
    # Never shorter than a reply may take: a redelivery must find the reply ended.
    "visibility_timeout": env_int(
        "CELERY_VISIBILITY_TIMEOUT", REPLY_TIME_LIMIT + 120, minimum=REPLY_TIME_LIMIT + 90
    ),
}
# Replies run as threads that wait on one shared event loop, so one worker process
# streams this many replies at once (see docs/operations.md).
REPLY_CONCURRENCY = env_int("REPLY_CONCURRENCY", 256, minimum=1, maximum=4096)
# A streaming reply's worker renews a lease in Redis this often; a reply whose lease
# lapsed (its worker died) is failed by any other worker's sweep, so a visitor hears
# within about REPLY_LEASE_SECONDS + REPLY_SWEEP_SECONDS, not a visibility timeout.
REPLY_LEASE_SECONDS = env_int("REPLY_LEASE_SECONDS", 10, minimum=3, maximum=300)
REPLY_SWEEP_SECONDS = env_int("REPLY_SWEEP_SECONDS", 5, minimum=1, maximum=300)
# A visitor message still unanswered (and unmoderated) after this long has its task
# queued again: the first copy died with its worker (tasks are idempotent).
REQUEUE_UNANSWERED_SECONDS = env_int("REQUEUE_UNANSWERED_SECONDS", 30, minimum=5)
# A worker keeps trying to store a finished reply this long while the database is
# away (a restart, a failover); past it, the sweep fails the reply once it is back.
# At most 60, so the task ends well within the broker's redelivery margin.
DB_RETRY_SECONDS = env_int("DB_RETRY_SECONDS", 60, minimum=0, maximum=60)

# --- Model API -----------------------------------------------------------------

LLM_API_KEY = env_str("LLM_API_KEY") or env_str("OPENAI_API_KEY")
LLM_BASE_URL = env_url(
    "LLM_BASE_URL", "" if LLM_API_KEY else _LOCAL.get("LLM_BASE_URL", ""), schemes=("http", "https")
)
if not LLM_BASE_URL and LLM_API_KEY:
    LLM_BASE_URL = "https://api.openai.com/v1"
LLM_BASE_URL = LLM_BASE_URL.rstrip("/")
LLM_MODEL = env_str(
    "LLM_MODEL",
    "gpt-4o-mini" if "api.openai.com" in LLM_BASE_URL else _LOCAL.get("LLM_MODEL", "local"),
)
LLM_CONNECT_TIMEOUT = env_float("LLM_CONNECT_TIMEOUT", 5.0, minimum=0.1)
# The longest silence allowed between two chunks of a streamed reply.
LLM_READ_TIMEOUT = env_float("LLM_READ_TIMEOUT", 30.0, minimum=0.1)
LLM_FIRST_TOKEN_TIMEOUT = env_float("LLM_FIRST_TOKEN_TIMEOUT", 60.0, minimum=0.1)
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 2, minimum=0, maximum=10)
LLM_RETRY_MAX_WAIT = env_float("LLM_RETRY_MAX_WAIT", 20.0, minimum=0)
# Tokens of conversation history sent with each request (system prompt included).
LLM_CONTEXT_TOKENS = env_int("LLM_CONTEXT_TOKENS", 3000, minimum=256)
STREAM_COALESCE_MS = env_int("STREAM_COALESCE_MS", 40, minimum=0, maximum=1000)

# --- Moderation ----------------------------------------------------------------

# false turns moderation off for the whole deployment (verdicts are stored as
# "unchecked"): only for measuring its cost, or behind a moderating proxy.
MODERATION_ENABLED = env_bool("MODERATION_ENABLED", True)

# An OpenAI-compatible /moderations endpoint; unset, sites use the offline moderator.
MODERATION_BASE_URL = env_url("MODERATION_BASE_URL", "", schemes=("http", "https")).rstrip("/")
MODERATION_API_KEY = env_str("MODERATION_API_KEY") or (
    LLM_API_KEY if "api.openai.com" in MODERATION_BASE_URL else ""
)
MODERATION_MODEL = env_str("MODERATION_MODEL", "omni-moderation-latest")
# One moderation call, retries included, never takes longer than this.
MODERATION_TIMEOUT = env_float("MODERATION_TIMEOUT", 5.0, minimum=0.1)
MODERATION_MAX_RETRIES = env_int("MODERATION_MAX_RETRIES", 1, minimum=0, maximum=5)
# Gate mode releases an answer in windows: a sentence, or at most this many characters.
MODERATION_WINDOW_CHARS = env_int("MODERATION_WINDOW_CHARS", 240, minimum=40, maximum=4000)
# Characters of already-released text checked together with each new window.
MODERATION_CONTEXT_CHARS = env_int("MODERATION_CONTEXT_CHARS", 400, minimum=0, maximum=8000)
# Offer the model a handoff_to_human tool (for providers that support tools); otherwise
# the system prompt asks for a marker that is stripped before the visitor sees it.
LLM_HANDOFF_TOOL = env_bool("LLM_HANDOFF_TOOL", False)
# The most chunks retrieval ranks per question. Exact below it; beyond it (long
# questions of common words on a large knowledge base) only the rarest words bring
# chunks in (docs/knowledge.md, "Latency"). Higher: closer to exact, slower.
KNOWLEDGE_RANK_BUDGET = env_int("KNOWLEDGE_RANK_BUDGET", 2000, minimum=100, maximum=1_000_000)

# --- Visitor limits --------------------------------------------------------------

MESSAGE_MAX_CHARS = 4000
WS_MAX_FRAME_BYTES = env_int("WS_MAX_FRAME_BYTES", 64 * 1024, minimum=16 * 1024)
WS_HELLO_TIMEOUT = env_float("WS_HELLO_TIMEOUT", 10.0, minimum=1)
# A send to a socket that waits this long (its reader stopped reading and the
# buffers are full) makes the server let go of the socket: see slow_readers.py.
WS_SEND_TIMEOUT = env_float("WS_SEND_TIMEOUT", 20.0, minimum=1)
RATE_VISITOR_MESSAGES_PER_MINUTE = env_int("RATE_VISITOR_MESSAGES_PER_MINUTE", 20, minimum=1)
RATE_ADDRESS_MESSAGES_PER_MINUTE = env_int("RATE_ADDRESS_MESSAGES_PER_MINUTE", 120, minimum=1)
RATE_CONVERSATIONS_PER_HOUR = env_int("RATE_CONVERSATIONS_PER_HOUR", 30, minimum=1)
# Per-site limits (docs/operations.md): the default for every site whose own field is
# empty; 0 means no limit. The token cap is off unless set: its budget depends on the model.
RATE_SITE_MESSAGES_PER_MINUTE = env_int("RATE_SITE_MESSAGES_PER_MINUTE", 3000, minimum=0)
RATE_SITE_CONVERSATIONS_PER_HOUR = env_int("RATE_SITE_CONVERSATIONS_PER_HOUR", 10000, minimum=0)
RATE_SITE_CONCURRENT_REPLIES = env_int("RATE_SITE_CONCURRENT_REPLIES", 256, minimum=0)
RATE_SITE_TOKENS_PER_DAY = env_int("RATE_SITE_TOKENS_PER_DAY", 0, minimum=0)
# Set when a trusted proxy in front of the ASGI server sends X-Forwarded-For.
TRUST_X_FORWARDED_FOR = env_bool("TRUST_X_FORWARDED_FOR", False)

# --- Misc ----------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Only for deployments that run collectstatic; local runs serve from the finders.
STATIC_ROOT = env_str("STATIC_ROOT") or None
STATICFILES_DIRS = [BASE_DIR / "static"]

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Requests refused as the client's mistake (a bad Host, a malformed websocket
    # frame) are logged by Django and uvicorn as server errors with a traceback; one
    # warning line is enough (supportbot/logfilters.py).
    "filters": {"client_errors": {"()": "supportbot.logfilters.ClientErrorsWithoutTraceback"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["client_errors"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "supportbot": {"level": LOG_LEVEL},
        "conversations": {"level": LOG_LEVEL},
        "httpx": {"level": "WARNING"},
        # uvicorn's own handler, not ours, writes this logger's records.
        "uvicorn.error": {"filters": ["client_errors"]},
    },
}

# Serve static files straight from the app and static/ folders: no collectstatic step
# for a local run, and the widget is always the checked-out version.
WHITENOISE_USE_FINDERS = True
WHITENOISE_MAX_AGE = 300
# Re-read files on each request while developing, so an edited widget.js is served
# whole (otherwise the length recorded at start-up no longer matches the file).
WHITENOISE_AUTOREFRESH = DEBUG
# WhiteNoise hands Django a file iterator that Django's ASGI handler reads in a
# thread; that is fine for files this small, so the per-request warning is noise.
warnings.filterwarnings(
    "ignore", message="StreamingHttpResponse must consume synchronous iterators"
)
