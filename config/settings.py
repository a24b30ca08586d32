"""Hearth settings, driven by the environment.

Two modes, one code path: with HEARTH_REDIS_URL set (production), Celery runs over Redis with separate worker
processes, Channels uses channels_redis, the relay uses Redis Streams and the database comes from DATABASE_URL.
Without it (embedded, the `make run` default), SQLite, an in-process Celery worker thread on kombu's in-memory
transport, and in-memory channel layer and relay.
"""

from __future__ import annotations

import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config import redis as redis_config
from config.env import backend_settings, env_bool, env_bytes, env_int, env_json, env_list, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("HEARTH_DATA_DIR", str(BASE_DIR / "var"))).resolve()
MODELS_DIR = Path(env_str("HEARTH_MODELS_DIR", str(DATA_DIR / "models"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEFAULT_SECRET_KEY = "hearth-insecure-development-key-change-me"
SECRET_KEY = env_str("HEARTH_SECRET_KEY", DEFAULT_SECRET_KEY)
REDIS_URL = env_str("HEARTH_REDIS_URL")
PRODUCTION = bool(REDIS_URL)
# Off unless asked for: DEBUG pages list every URL pattern and setting to whoever can reach the server.
DEBUG = env_bool("HEARTH_DEBUG", False)

if PRODUCTION:
    if SECRET_KEY == DEFAULT_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured(
            "Production mode (HEARTH_REDIS_URL is set) needs HEARTH_SECRET_KEY: a random string of at least 32 "
            "characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'."
        )
    if DEBUG:
        raise ImproperlyConfigured("Production mode (HEARTH_REDIS_URL is set) refuses to run with HEARTH_DEBUG on.")

# ---------------------------------------------------------------------------------------------------------
# Security: hosts, origins, HTTPS behind a proxy, cookies. (config/security.py and config/origins.py use these.)
ALLOWED_HOSTS = env_list("HEARTH_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("HEARTH_CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if not re.fullmatch(r"https?://[^/\s]+", _origin):
        raise ImproperlyConfigured(f"HEARTH_CSRF_TRUSTED_ORIGINS: {_origin!r} is not an origin such as "
                                   "https://hearth.example.com (scheme, host and port if not the default).")
# The header a TLS-terminating proxy in front of Hearth sets to "https" (e.g. X-Forwarded-Proto). Set it only when
# that proxy overwrites the header on every request: a client could send it too. With it, Django and the websocket
# origin check see HTTPS requests as such, and daphne takes client addresses from X-Forwarded-For.
HEARTH_TRUSTED_PROXY_HEADER = env_str("HEARTH_TRUSTED_PROXY_HEADER")
if HEARTH_TRUSTED_PROXY_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", HEARTH_TRUSTED_PROXY_HEADER):
    raise ImproperlyConfigured(f"HEARTH_TRUSTED_PROXY_HEADER={HEARTH_TRUSTED_PROXY_HEADER!r} is not a header name "
                               "such as X-Forwarded-Proto.")
SECURE_PROXY_SSL_HEADER = None
if HEARTH_TRUSTED_PROXY_HEADER:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + HEARTH_TRUSTED_PROXY_HEADER.upper().replace("-", "_"), "https")
# Session and CSRF cookies only over HTTPS, and HSTS on HTTPS responses. Unset or empty: on behind a trusted proxy.
HEARTH_SECURE_COOKIES = bool(HEARTH_TRUSTED_PROXY_HEADER)
if env_str("HEARTH_SECURE_COOKIES"):
    HEARTH_SECURE_COOKIES = env_bool("HEARTH_SECURE_COOKIES", HEARTH_SECURE_COOKIES)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HEARTH_SECURE_COOKIES
SECURE_HSTS_SECONDS = 365 * 24 * 3600 if HEARTH_SECURE_COOKIES else 0
# ---------------------------------------------------------------------------------------------------------

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # /api/docs from its bundled static files, not a CDN (the CSP allows this site only)
    "inference",
    "api",
    "webui",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "api.dialects.DialectErrorsMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",
    "config.security.RefuseKeysInUrlMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.security.RefuseInvalidTextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webui.middleware.OutageMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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

# PostgreSQL through a connection pool per process (psycopg_pool): under ASGI every request runs its ORM calls in a
# thread of its own, so connections kept per thread (CONN_MAX_AGE) pile up with concurrent requests; the pool bounds
# what each process holds (HEARTH_DB_POOL_SIZE) and a request that finds it exhausted waits HEARTH_DB_POOL_TIMEOUT.
HEARTH_DB_POOL_SIZE = env_int("HEARTH_DB_POOL_SIZE", 10, minimum=1)
HEARTH_DB_POOL_TIMEOUT = env_int("HEARTH_DB_POOL_TIMEOUT", 10, minimum=1)
if env_str("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(env_str("DATABASE_URL"), conn_max_age=0)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # CONN_HEALTH_CHECKS: the pool tests a connection as it hands it out (one round trip), so the connections a
        # database restart cut are replaced instead of failing the first requests after it.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 0, "max_size": HEARTH_DB_POOL_SIZE, "timeout": HEARTH_DB_POOL_TIMEOUT,
            "max_idle": 60, "reconnect_timeout": 30,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "config.sqlite",  # SQLite, writers queued in-process (config/sqlite/base.py)
            "NAME": env_str("HEARTH_SQLITE_PATH", str(DATA_DIR / "hearth.sqlite3")),
            "OPTIONS": {
                # WAL lets the web server read while the worker writes; the busy timeout waits out a writer.
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# ---------------------------------------------------------------------------------------------------------
# Single sign-on with an OpenID Connect provider (webui/sso.py over mozilla-django-oidc; docs/deployment.md). Unset
# issuer: no SSO. The provider's endpoints come from <issuer>/.well-known/openid-configuration (cached an hour).
HEARTH_OIDC_ISSUER = env_url("HEARTH_OIDC_ISSUER")
HEARTH_OIDC_CLIENT_ID = env_str("HEARTH_OIDC_CLIENT_ID")
HEARTH_OIDC_CLIENT_SECRET = env_str("HEARTH_OIDC_CLIENT_SECRET")
# Email domains whose people may sign in (empty: any); the email must be verified by the provider.
HEARTH_OIDC_ALLOWED_DOMAINS = [d.lower().removeprefix("@") for d in env_list("HEARTH_OIDC_ALLOWED_DOMAINS", [])]
# The claim that lists a user's groups (a dotted path reaches into objects: realm_access.roles); on every sign-in the
# user's Django groups become exactly these (set but empty: SSO leaves groups to Hearth's admins). Members of
# HEARTH_OIDC_ADMIN_GROUPS are admins (is_staff); without admin groups SSO leaves is_staff alone.
HEARTH_OIDC_GROUPS_CLAIM = env_str("HEARTH_OIDC_GROUPS_CLAIM", "groups")
HEARTH_OIDC_ADMIN_GROUPS = env_list("HEARTH_OIDC_ADMIN_GROUPS", [])
HEARTH_OIDC_PROVIDER_NAME = env_str("HEARTH_OIDC_PROVIDER_NAME", "single sign-on")
HEARTH_OIDC_SCOPES = env_str("HEARTH_OIDC_SCOPES", "openid email profile")
# Take the email claim as verified without email_verified: true (providers that never send it, e.g. Entra ID).
HEARTH_OIDC_TRUST_EMAIL = env_bool("HEARTH_OIDC_TRUST_EMAIL", False)
HEARTH_OIDC_TIMEOUT = env_int("HEARTH_OIDC_TIMEOUT", 10, minimum=1)
# Password sign-in on the login page. Off: only SSO there; superusers keep a password door at /admin/login/.
HEARTH_LOCAL_LOGIN = env_bool("HEARTH_LOCAL_LOGIN", True)
if HEARTH_OIDC_ISSUER and not (HEARTH_OIDC_CLIENT_ID and HEARTH_OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured("HEARTH_OIDC_ISSUER is set: also set HEARTH_OIDC_CLIENT_ID and HEARTH_OIDC_CLIENT_SECRET "
                               "(the client registered for Hearth at the provider).")
if not HEARTH_OIDC_ISSUER and (HEARTH_OIDC_CLIENT_ID or HEARTH_OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured("HEARTH_OIDC_CLIENT_ID/SECRET are set without HEARTH_OIDC_ISSUER, the provider's URL.")
if not HEARTH_LOCAL_LOGIN and not HEARTH_OIDC_ISSUER:
    raise ImproperlyConfigured("HEARTH_LOCAL_LOGIN is off but no single sign-on is set up (HEARTH_OIDC_ISSUER): "
                               "nobody could sign in.")
if "openid" not in HEARTH_OIDC_SCOPES.split():
    raise ImproperlyConfigured(f"HEARTH_OIDC_SCOPES={HEARTH_OIDC_SCOPES!r} lacks the scope 'openid'.")
if HEARTH_OIDC_ADMIN_GROUPS and not HEARTH_OIDC_GROUPS_CLAIM:
    raise ImproperlyConfigured("HEARTH_OIDC_ADMIN_GROUPS needs a groups claim, but HEARTH_OIDC_GROUPS_CLAIM is empty.")
for _domain in HEARTH_OIDC_ALLOWED_DOMAINS:
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", _domain):
        raise ImproperlyConfigured(f"HEARTH_OIDC_ALLOWED_DOMAINS: {_domain!r} is not a domain such as example.com.")
AUTHENTICATION_BACKENDS = ["webui.sso.PasswordBackend"] + (["webui.sso.OIDCBackend"] if HEARTH_OIDC_ISSUER else [])
# ---------------------------------------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

if PRODUCTION:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL,
                           **redis_config.async_retry_options(redis_config.CHANNEL_LAYER_BLOCK_SECONDS)}],
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: Redis in production, kombu's in-memory transport with a worker thread in the web process otherwise.
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A worker's threads take jobs (one each, so a worker never holds more than it has slots) and feed its engine,
# whose single thread decodes them all together (inference/worker.py).
CELERY_WORKER_POOL = "threads"
CELERY_TASK_DEFAULT_QUEUE = "generation"  # inference.tasks.GENERATION_QUEUE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if PRODUCTION:
    CELERY_BROKER_TRANSPORT_OPTIONS = redis_config.celery_transport_options()
else:
    # kombu's in-memory transport, woken by each message instead of polling (config/memory_broker.py).
    CELERY_BROKER_TRANSPORT = "config.memory_broker:Transport"

# Generation
HEARTH_MAX_CTX = env_int("HEARTH_MAX_CTX", 8192, minimum=64)
HEARTH_MAX_QUEUED = env_int("HEARTH_MAX_QUEUED", 32, minimum=0)
HEARTH_N_GPU_LAYERS = env_int("HEARTH_N_GPU_LAYERS", -1, minimum=-1)
HEARTH_N_THREADS = env_int("HEARTH_N_THREADS", 0, minimum=0) or None
HEARTH_MODEL_MEMORY_BUDGET = env_bytes("HEARTH_MODEL_MEMORY_BUDGET", 8 * 1024**3)
# A streamed response (SSE) takes what the worker produced at most this often, in one write: fewer wakeups and
# writes per token at high token rates, at most this much added delay per token (0: one write per token).
HEARTH_STREAM_INTERVAL_MS = env_int("HEARTH_STREAM_INTERVAL_MS", 50, minimum=0)
HEARTH_RELAY_TTL_SECONDS = env_int("HEARTH_RELAY_TTL_SECONDS", 600, minimum=10)
HEARTH_WORKER_HEARTBEAT_SECONDS = env_int("HEARTH_WORKER_HEARTBEAT_SECONDS", 2, minimum=1)
# A running job is leased to its worker; the heartbeat renews the lease. A lease that lapses (the worker killed,
# its machine gone) lets a live worker take the job over and continue its stream.
HEARTH_LEASE_SECONDS = env_int("HEARTH_LEASE_SECONDS", 3 * HEARTH_WORKER_HEARTBEAT_SECONDS, minimum=2)
# Sequences each worker process decodes together (its Celery thread pool has this many threads), and the prompt
# tokens a step reads at most beside them (a long prompt never holds the others up for more than one chunk).
HEARTH_WORKER_SLOTS = env_int("HEARTH_WORKER_SLOTS", 8, minimum=1)
HEARTH_PREFILL_CHUNK_TOKENS = env_int("HEARTH_PREFILL_CHUNK_TOKENS", 512, minimum=16)
CELERY_WORKER_CONCURRENCY = HEARTH_WORKER_SLOTS
# KV cache cells of a loaded model, shared by its slots (0: the model's context times the slots, at most 32768).
HEARTH_KV_TOKENS = env_int("HEARTH_KV_TOKENS", 0, minimum=0)
# A job nobody follows (its page, socket or SSE connection gone) is stopped after this long; an SSE client that
# hangs up mid-stream has HEARTH_RESUME_GRACE_SECONDS to come back with Last-Event-ID before its job stops.
HEARTH_WATCH_SECONDS = env_int("HEARTH_WATCH_SECONDS", 20, minimum=2)
HEARTH_RESUME_GRACE_SECONDS = env_int("HEARTH_RESUME_GRACE_SECONDS", 5, minimum=1)
# GET /metrics (Prometheus) with this bearer token; without one, administrators' sessions only.
HEARTH_METRICS_TOKEN = env_str("HEARTH_METRICS_TOKEN")
# Conversations pushed out of their slots are kept in host memory up to this, least recently used out first.
HEARTH_KV_CACHE_BYTES = env_bytes("HEARTH_KV_CACHE_BYTES", 2 * 1024**3)
HEARTH_EMBEDDED_WORKER = env_bool("HEARTH_EMBEDDED_WORKER", not PRODUCTION)
HEARTH_DEFAULT_BACKEND = env_str("HEARTH_DEFAULT_BACKEND")
# When a backend cannot load a model, the next of its chain is tried (and the job says so).
HEARTH_FALLBACK_CHAINS = env_json("HEARTH_FALLBACK_CHAINS", {"llamacpp": ["torch"], "torch": ["llamacpp"],
                                                             "mlx": ["torch"]})
backend_settings("HEARTH_DEFAULT_BACKEND", HEARTH_DEFAULT_BACKEND, "HEARTH_FALLBACK_CHAINS", HEARTH_FALLBACK_CHAINS)
# Request bodies over this are refused with 413 (API) before they are read.
HEARTH_MAX_BODY_BYTES = env_bytes("HEARTH_MAX_BODY_BYTES", 16 * 1024**2)
DATA_UPLOAD_MAX_MEMORY_SIZE = HEARTH_MAX_BODY_BYTES
# The largest conversations file the Export / import page takes (webui.exports).
HEARTH_MAX_IMPORT_BYTES = env_bytes("HEARTH_MAX_IMPORT_BYTES", 32 * 1024**2)
# Model uploads arrive in chunks of a few MiB; this caps the whole file (or a folder's files together).
HEARTH_MAX_UPLOAD_BYTES = env_bytes("HEARTH_MAX_UPLOAD_BYTES", 64 * 1024**3)
# Unfinished uploads that received nothing for this long are swept away (their .part files and folders).
HEARTH_UPLOAD_ABANDON_HOURS = env_int("HEARTH_UPLOAD_ABANDON_HOURS", 24, minimum=1)
HEARTH_ADMIN_SECRET_FILE = Path(env_str("HEARTH_ADMIN_SECRET_FILE", str(DATA_DIR / "admin-credentials.txt")))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HEARTH_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}
