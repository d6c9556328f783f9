"""medkg settings: everything comes from the environment, with safe embedded defaults.

Embedded default (no variables set): SQLite under var/, the in-process
sentence-transformers model, FAISS on local disk and Celery tasks run eagerly.
Optional systems are switched on by presence: OPENSEARCH_URL, VLLM_URL,
CELERY_BROKER_URL, REDIS_URL.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

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


DEBUG = env.bool("DEBUG", default=False)
_secret_key = secret("SECRET_KEY")
if not _secret_key:
    if not DEBUG and env.bool("MEDKG_REQUIRE_SECRET_KEY", default=False):
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set in production")
    # Embedded/dev default, stable so tokens survive restarts. The django-insecure- prefix makes
    # `manage.py check --deploy` fail (security.W009) wherever it would reach production.
    _secret_key = "django-insecure-medkg-development-key-not-for-production"
SECRET_KEY: str = _secret_key
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
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
    "django.middleware.security.SecurityMiddleware",
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

VAR_DIR = Path(env.str("MEDKG_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file and FAISS indexes live here
try:
    DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'medkg.sqlite3'}")}
except (ImproperlyConfigured, ValueError, KeyError) as error:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {error}") from error
# Persistent connections: a PostgreSQL handshake per request would cost more than the request's queries.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))

# --- security (production settings switch these on through the environment) ---
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^metrics$"]

# --- REST framework and JWT ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["medkg.api.authentication.TenantJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["medkg.api.permissions.HasRequiredScope"],
    "DEFAULT_RENDERER_CLASSES": ["medkg.api.renderers.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["medkg.api.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "medkg.api.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
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
MEDKG_PRELOAD_MODELS = env.bool("MEDKG_PRELOAD_MODELS", default=False)
MEDKG_PROVIDER_TIMEOUT_SECONDS = env.float("MEDKG_PROVIDER_TIMEOUT_SECONDS", default=30.0)
# torch sizes its thread pool from the host's cores, not a container's CPU limit: set this to the limit.
MEDKG_TORCH_THREADS = env.int("MEDKG_TORCH_THREADS", default=0) or None
VLLM_URL = env.str("VLLM_URL", default="")
VLLM_API_KEY = secret("VLLM_API_KEY", "") or ""
OPENSEARCH_URL = env.str("OPENSEARCH_URL", default="")
FAISS_DATA_DIR = Path(env.str("FAISS_DATA_DIR", default=str(VAR_DIR / "faiss")))
REDIS_URL = env.str("REDIS_URL", default="")

# --- operations ---
# Where operations commands (triggers, drills) reach the running service, and Prometheus when there is one.
MEDKG_BASE_URL = env.str("MEDKG_BASE_URL", default="http://127.0.0.1:8000")
PROMETHEUS_URL = env.str("PROMETHEUS_URL", default="")
# How long a serving process trusts its snapshot of the rollback routes (a rollback waits this long to drain).
MEDKG_SERVING_STATE_TTL = env.float("MEDKG_SERVING_STATE_TTL", default=1.0)

# --- Celery: eager (in-process) unless a broker is configured ---
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL or None)
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

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
    "formatters": {"json": {"()": "medkg.logging.JSONFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
