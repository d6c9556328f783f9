"""medkg settings: everything comes from the environment, with safe embedded defaults.

Embedded default (no variables set): SQLite under var/, the in-process
sentence-transformers model, FAISS on local disk and Celery tasks run eagerly.
Optional systems are switched on by presence: OPENSEARCH_URL, VLLM_URL,
CELERY_BROKER_URL, REDIS_URL.

MEDKG_ENVIRONMENT=staging|production (deploy/) turns on the deployed defaults: a
SECRET_KEY and ALLOWED_HOSTS are required, DEBUG is refused, HTTPS behind the TLS
proxy (redirect, HSTS, secure cookies). Each stays overridable by its own variable.
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from embeddings.stores.registry import SPARSE_STORES, STORES

BASE_DIR = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

env = environ.Env()


def secret(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as error:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {error}") from error
    return os.environ.get(name, default)


def positive_int(name: str, default: int) -> int:
    try:
        value = env.int(name, default=default)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be an integer: {error}") from error
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be a positive integer, got {value}")
    return value


MEDKG_ENVIRONMENT = env.str("MEDKG_ENVIRONMENT", default="development")
if MEDKG_ENVIRONMENT not in ("development", "staging", "production"):
    raise ImproperlyConfigured(
        f"MEDKG_ENVIRONMENT must be development, staging or production, got {MEDKG_ENVIRONMENT!r}"
    )
DEPLOYED = MEDKG_ENVIRONMENT != "development"

DEBUG = env.bool("DEBUG", default=False)
if DEPLOYED and DEBUG:
    raise ImproperlyConfigured(f"DEBUG must be off when MEDKG_ENVIRONMENT={MEDKG_ENVIRONMENT}")
VAR_DIR = Path(env.str("MEDKG_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file, FAISS indexes and dev key live here


def development_key(var_dir: Path) -> str:
    """The embedded default's signing key: random, made once under var_dir (mode 0600), then reused.

    No key is written in the source: anyone could forge any tenant's token with it. The file is
    created by linking a complete temporary file into place, so concurrent first starts (gunicorn
    workers, a manage.py command) all end up with the one key that won the link. The
    django-insecure- prefix keeps `manage.py check --deploy` failing (security.W009) wherever it
    would reach production.
    """
    path = var_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    temporary = var_dir / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"django-insecure-{secrets.token_urlsafe(48)}\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: use that one
    finally:
        temporary.unlink()
    return path.read_text().strip()


_secret_key = secret("SECRET_KEY")
if not _secret_key:
    if not DEBUG and env.bool("MEDKG_REQUIRE_SECRET_KEY", default=DEPLOYED):
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set in production")
    _secret_key = development_key(VAR_DIR)
SECRET_KEY: str = _secret_key
if DEPLOYED and "ALLOWED_HOSTS" not in os.environ:
    raise ImproperlyConfigured(f"ALLOWED_HOSTS must be set when MEDKG_ENVIRONMENT={MEDKG_ENVIRONMENT}")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
# Kubernetes probes and Prometheus reach a pod by its IP (downward API), which no fixed list can name.
if os.environ.get("POD_IP"):
    ALLOWED_HOSTS.append(os.environ["POD_IP"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "namespaces",
    "embeddings",
    "operations",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "medkg.middleware.RequestIdMiddleware",
    "medkg.middleware.WorkMarkMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's static files, collected into the image
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "medkg.urls"
WSGI_APPLICATION = "medkg.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

try:
    # secret(): the URL holds the password, so DATABASE_URL_FILE works like the other secrets.
    DATABASES = {"default": env.db_url_config(secret("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'medkg.sqlite3'}")}
except (ImproperlyConfigured, ValueError, KeyError) as error:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {error}") from error
# Persistent connections: a PostgreSQL handshake per request would cost more than the request's queries.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default writes from requests and from the ingestion thread at once. IMMEDIATE takes the write
    # lock when a transaction starts, so writers queue on the busy timeout instead of failing at once with
    # "database is locked" when a read transaction cannot upgrade; WAL lets readers go on during a write.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
WHITENOISE_USE_FINDERS = not STATIC_ROOT.is_dir()
if WHITENOISE_USE_FINDERS:
    # make run and the tests collect nothing: WhiteNoise serves the apps' own files, and the empty root is expected.
    warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}")

# --- security: off for make run (plain HTTP on loopback), on by default when deployed behind the TLS proxy ---
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=DEPLOYED)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=DEPLOYED)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=DEPLOYED)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if DEPLOYED else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=DEPLOYED)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=DEPLOYED)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=DEPLOYED) else None
)
# Probes and scrapes speak plain HTTP to the pod: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^metrics$"]

# --- REST framework and JWT ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["medkg.api.authentication.TenantJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["medkg.api.permissions.HasRequiredScope"],
    "DEFAULT_RENDERER_CLASSES": ["medkg.api.renderers.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["medkg.api.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "medkg.api.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["medkg.api.throttling.TenantQuotaThrottle"],
    "DEFAULT_SCHEMA_CLASS": "medkg.api.schema.MedkgAutoSchema",  # drf-spectacular's, plus the quota's 429
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "medkg embeddings API",
    "DESCRIPTION": "Tenant-aware text embeddings for the medical knowledge graph.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
    },
    "SECURITY": [{"bearerAuth": []}],
}

JWT_SIGNING_KEY = secret("JWT_SIGNING_KEY") or SECRET_KEY
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(hours=1),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": JWT_SIGNING_KEY,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_CLAIM": "tenant_id",
    "LEEWAY": 0,
}

# --- embedding service ---
MEDKG_CONFIG_DIR = Path(env.str("MEDKG_CONFIG_DIR", default=str(BASE_DIR / "config")))
MEDKG_DEFAULT_NAMESPACE = env.str("MEDKG_DEFAULT_NAMESPACE", default="single_vector.minilm.384.v1")
MEDKG_MAX_TEXTS_PER_REQUEST = positive_int("MEDKG_MAX_TEXTS_PER_REQUEST", 256)
MEDKG_MAX_REQUEST_BYTES = positive_int("MEDKG_MAX_REQUEST_BYTES", 4 * 1024 * 1024)
MEDKG_MAX_TEXT_CHARS = positive_int("MEDKG_MAX_TEXT_CHARS", 100_000)
# Answered as JSON 414 / 431 by medkg.http_limits (the servers' own limits are set above these).
MEDKG_MAX_URI_BYTES = positive_int("MEDKG_MAX_URI_BYTES", 4096)
MEDKG_MAX_HEADER_BYTES = positive_int("MEDKG_MAX_HEADER_BYTES", 8192)
MEDKG_PRELOAD_MODELS = env.bool("MEDKG_PRELOAD_MODELS", default=False)
MEDKG_PROVIDER_TIMEOUT_SECONDS = env.float("MEDKG_PROVIDER_TIMEOUT_SECONDS", default=30.0)
# Concurrent requests share forward passes of the in-process model (limits: vllm.yaml's batching section).
MEDKG_DYNAMIC_BATCHING = env.bool("MEDKG_DYNAMIC_BATCHING", default=True)
# The model scheduler (embeddings/providers/batching.py): no pass holds the model for more than this many
# estimated tokens (MiniLM on 2 cores: 1,024 tokens of long texts take about 0.7 s), and bulk work keeps this
# share of each pass while interactive work also waits.
MEDKG_SCHEDULER_MAX_PASS_TOKENS = positive_int("MEDKG_SCHEDULER_MAX_PASS_TOKENS", 1024)
MEDKG_SCHEDULER_BULK_SHARE = env.float("MEDKG_SCHEDULER_BULK_SHARE", default=0.25)
# Remote backends (vLLM): requests in flight per namespace and process, and tokens per request; 0 sends each call
# straight through, unscheduled. A namespace's parameters max_concurrency / max_pass_tokens override them.
MEDKG_REMOTE_MAX_CONCURRENCY = env.int("MEDKG_REMOTE_MAX_CONCURRENCY", default=8)
MEDKG_REMOTE_MAX_PASS_TOKENS = positive_int("MEDKG_REMOTE_MAX_PASS_TOKENS", 16384)
if not 0 <= MEDKG_SCHEDULER_BULK_SHARE < 1:
    raise ImproperlyConfigured("MEDKG_SCHEDULER_BULK_SHARE must be at least 0 and below 1")
# In-process models run their batches as passes sorted by token count (embeddings/providers/sorted_encode.py).
MEDKG_TOKEN_SORTED_PASSES = env.bool("MEDKG_TOKEN_SORTED_PASSES", default=True)
# Per-tenant quotas (a tenant's own, set in the admin, wins; 0 is unlimited): on by default when deployed.
MEDKG_QUOTA_REQUESTS_PER_SECOND = env.float("MEDKG_QUOTA_REQUESTS_PER_SECOND", default=50.0 if DEPLOYED else 0.0)
MEDKG_QUOTA_TOKENS_PER_MINUTE = env.int("MEDKG_QUOTA_TOKENS_PER_MINUTE", default=1_000_000 if DEPLOYED else 0)
# Refusals before authentication (no token, a bad or expired one), per client address: past the burst, 429.
MEDKG_UNAUTHENTICATED_PER_SECOND = env.float("MEDKG_UNAUTHENTICATED_PER_SECOND", default=5.0)
MEDKG_UNAUTHENTICATED_BURST = positive_int("MEDKG_UNAUTHENTICATED_BURST", 20)
# They are audited as one row per source, reason and window of this many seconds, with a count.
MEDKG_REFUSAL_WINDOW_SECONDS = positive_int("MEDKG_REFUSAL_WINDOW_SECONDS", 60)
if MEDKG_QUOTA_REQUESTS_PER_SECOND < 0 or MEDKG_QUOTA_TOKENS_PER_MINUTE < 0:
    raise ImproperlyConfigured("MEDKG_QUOTA_REQUESTS_PER_SECOND and MEDKG_QUOTA_TOKENS_PER_MINUTE must be >= 0")
# What one tenant may store, all namespaces together (a tenant's own, set in the admin, wins; 0 is unlimited):
# live documents, and bytes of their UTF-8 text plus metadata JSON. Past either, a POST is refused whole (413).
MEDKG_MAX_DOCUMENTS_PER_TENANT = env.int("MEDKG_MAX_DOCUMENTS_PER_TENANT", default=5_000_000)
MEDKG_MAX_STORED_BYTES_PER_TENANT = env.int("MEDKG_MAX_STORED_BYTES_PER_TENANT", default=20 * 1024**3)
if MEDKG_MAX_DOCUMENTS_PER_TENANT < 0 or MEDKG_MAX_STORED_BYTES_PER_TENANT < 0:
    raise ImproperlyConfigured("MEDKG_MAX_DOCUMENTS_PER_TENANT and MEDKG_MAX_STORED_BYTES_PER_TENANT must be >= 0")
# Automatic failover to a namespace's `fallback`: a circuit breaker per namespace and process.
MEDKG_BREAKER_FAILURE_THRESHOLD = positive_int("MEDKG_BREAKER_FAILURE_THRESHOLD", 3)
MEDKG_BREAKER_RESET_SECONDS = env.float("MEDKG_BREAKER_RESET_SECONDS", default=5.0)
# torch sizes its thread pool from the host's cores, not a container's CPU limit: set this to the limit.
MEDKG_TORCH_THREADS = env.int("MEDKG_TORCH_THREADS", default=0) or None
# OpenMP threads that spin between forward passes take the cores the request threads need to parse the next
# requests (bench/embed_throughput.py --sweep: dynamic batching gained nothing with spinning, 2x with passive
# waits on a busy 2-core host). Read by libgomp when torch loads, which is after the settings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
VLLM_URL = env.str("VLLM_URL", default="")
VLLM_API_KEY = secret("VLLM_API_KEY", "") or ""
# URLs that may carry credentials: each can come from NAME_FILE too.
OPENSEARCH_URL = secret("OPENSEARCH_URL", "") or ""
# OpenSearch k-NN store: basic auth (or user:password@ in the URL), TLS verified unless switched off,
# a private CA's bundle in OPENSEARCH_CA_CERTS. One index per namespace, named <prefix><namespace>.
OPENSEARCH_USERNAME = env.str("OPENSEARCH_USERNAME", default="")
OPENSEARCH_PASSWORD = secret("OPENSEARCH_PASSWORD", "") or ""
OPENSEARCH_VERIFY_CERTS = env.bool("OPENSEARCH_VERIFY_CERTS", default=True)
OPENSEARCH_CA_CERTS = env.str("OPENSEARCH_CA_CERTS", default="")
OPENSEARCH_TIMEOUT_SECONDS = positive_int("OPENSEARCH_TIMEOUT_SECONDS", 10)
OPENSEARCH_INDEX_PREFIX = env.str("OPENSEARCH_INDEX_PREFIX", default="medkg-")
FAISS_DATA_DIR = Path(env.str("FAISS_DATA_DIR", default=str(VAR_DIR / "faiss")))
# Extra options of the JVM that BM25 (Pyserini) starts in each worker process on first use, e.g. "-Xmx1g":
# every Celery prefork child and gunicorn worker that serves BM25 holds its own JVM.
PYSERINI_JVM_OPTIONS = env.str("PYSERINI_JVM_OPTIONS", default="")
# faiss (embedded) unless OpenSearch is configured; a namespace may pick its own with `parameters.store`.
MEDKG_VECTOR_STORE = env.str("MEDKG_VECTOR_STORE", default="opensearch" if OPENSEARCH_URL else "faiss")
if MEDKG_VECTOR_STORE not in STORES:
    raise ImproperlyConfigured(f"MEDKG_VECTOR_STORE must be one of {sorted(STORES)}, not {MEDKG_VECTOR_STORE!r}")
# Where SPLADE-style term weights go: the embedded impact index beside the FAISS files, or OpenSearch rank_features.
# A namespace's `parameters.store` wins (BM25 namespaces name `lucene`: Pyserini's own index).
MEDKG_SPARSE_STORE = env.str("MEDKG_SPARSE_STORE", default="opensearch" if OPENSEARCH_URL else "impact")
if MEDKG_SPARSE_STORE not in SPARSE_STORES:
    raise ImproperlyConfigured(f"MEDKG_SPARSE_STORE must be one of {sorted(SPARSE_STORES)}, not {MEDKG_SPARSE_STORE!r}")
MEDKG_MAX_DOCUMENTS_PER_REQUEST = positive_int("MEDKG_MAX_DOCUMENTS_PER_REQUEST", 1000)
MEDKG_MAX_SEARCH_K = positive_int("MEDKG_MAX_SEARCH_K", 1000)
MEDKG_MAX_RERANK_DOCUMENTS = positive_int("MEDKG_MAX_RERANK_DOCUMENTS", 1000)  # per /v1/rerank request
# One limit on a document's metadata, checked when it is accepted: what is stored can always be returned by search.
MEDKG_METADATA_MAX_DEPTH = min(positive_int("MEDKG_METADATA_MAX_DEPTH", 16), 64)
MEDKG_METADATA_MAX_BYTES = positive_int("MEDKG_METADATA_MAX_BYTES", 16 * 1024)
# Documents embedded and written to the store per step of an ingestion job (one durable index write per step).
MEDKG_INGESTION_STEP = positive_int("MEDKG_INGESTION_STEP", 256)
# Without a broker: run ingestion jobs in a background thread (the default) or inline in the request ("inline").
MEDKG_INGESTION_LOCAL_MODE = env.str("MEDKG_INGESTION_LOCAL_MODE", default="thread")
if MEDKG_INGESTION_LOCAL_MODE not in {"thread", "inline"}:
    raise ImproperlyConfigured("MEDKG_INGESTION_LOCAL_MODE must be thread or inline")
REDIS_URL = secret("REDIS_URL", "") or ""

# --- operations ---
# Where operations commands (triggers, drills) reach the running service, and Prometheus when there is one.
MEDKG_BASE_URL = env.str("MEDKG_BASE_URL", default="http://127.0.0.1:8000")
PROMETHEUS_URL = env.str("PROMETHEUS_URL", default="")
# How long a serving process trusts its snapshot of the rollback routes (a rollback waits this long to drain).
MEDKG_SERVING_STATE_TTL = env.float("MEDKG_SERVING_STATE_TTL", default=1.0)
# How long a serving process trusts the tenant and namespace rows it read (namespaces/selectors.py): changes
# saved in the process apply at once, others (another process, bulk updates) within this time; 0 turns it off.
MEDKG_ACCESS_CACHE_TTL = env.float("MEDKG_ACCESS_CACHE_TTL", default=1.0)
if MEDKG_ACCESS_CACHE_TTL < 0:
    raise ImproperlyConfigured("MEDKG_ACCESS_CACHE_TTL must be >= 0")

# Re-embedding migrations (operations.lifecycle): the gate refuses a target whose nDCG@10 or Recall@10 is more than
# this fraction below the source's (the runbook's relative 5 % Recall@10 rule), and the old version stays the new
# one's standby for this long after the cutover (an instant, lossless way back).
MEDKG_MIGRATION_GATE_MARGIN = env.float("MEDKG_MIGRATION_GATE_MARGIN", default=0.05)
if not 0 <= MEDKG_MIGRATION_GATE_MARGIN < 1:
    raise ImproperlyConfigured("MEDKG_MIGRATION_GATE_MARGIN must be >= 0 and < 1 (a relative drop, 0.05 = 5 %)")
MEDKG_MIGRATION_WINDOW_SECONDS = env.int("MEDKG_MIGRATION_WINDOW_SECONDS", default=7 * 24 * 3600)
if MEDKG_MIGRATION_WINDOW_SECONDS < 0:
    raise ImproperlyConfigured("MEDKG_MIGRATION_WINDOW_SECONDS must be >= 0")
# The BEIR dataset the gate evaluates on when a migration names none (empty: every migration must name one).
MEDKG_MIGRATION_GATE_DATASET = env.str("MEDKG_MIGRATION_GATE_DATASET", default="")
# Documents copied per backfill transaction (one mirror job and the cursor, committed together).
MEDKG_MIGRATION_BACKFILL_CHUNK = positive_int("MEDKG_MIGRATION_BACKFILL_CHUNK", 500)
# The gate's overlap@10 runs each tenant's recent real queries (embeddings.QuerySample): the fraction of searches
# whose query text is kept (0 keeps none: the gate uses the dataset's queries), and how many are kept per tenant and
# namespace. Query texts are tenant data; they are erased with the tenant.
MEDKG_QUERY_SAMPLE_RATE = env.float("MEDKG_QUERY_SAMPLE_RATE", default=0.05)
if not 0 <= MEDKG_QUERY_SAMPLE_RATE <= 1:
    raise ImproperlyConfigured("MEDKG_QUERY_SAMPLE_RATE must be between 0 and 1")
MEDKG_QUERY_SAMPLE_KEEP = positive_int("MEDKG_QUERY_SAMPLE_KEEP", 200)

# --- Celery: eager (in-process) unless a broker is configured ---
CELERY_BROKER_URL = secret("CELERY_BROKER_URL", "") or ""
CELERY_RESULT_BACKEND = secret("CELERY_RESULT_BACKEND") or REDIS_URL or None
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="medkg")
# Redis redelivers an unacknowledged task (a worker killed mid-job) after this many seconds; a restarted worker
# also re-queues unfinished jobs itself at start, so this is the slow path.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
CELERY_WORKER_METRICS_PORT = env.int("CELERY_WORKER_METRICS_PORT", default=0)  # 0: no metrics endpoint

# --- caches: Redis when configured, else local memory ---
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "core.logging.JSONFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
