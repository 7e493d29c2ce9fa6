"""Django settings, read from the environment.

Defaults are the *embedded* configuration: SQLite and Celery's filesystem
transport, so ``make demo`` runs on a machine with neither PostgreSQL nor
Redis. Production sets ``DATABASE_URL`` and ``CELERY_BROKER_URL`` (see
README, "Configuration"). Every value goes through a typed helper in
``cxrplatform.env`` that fails loudly on bad input.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from cxrplatform.env import (
    env_bool,
    env_broker_url,
    env_database,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("CXR_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("DEBUG", default=False)
_DEV_SECRET = "insecure-dev-key-only-for-the-embedded-demo"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", default=_DEV_SECRET if DEBUG else None)
if not DEBUG and SECRET_KEY == _DEV_SECRET:
    raise ImproperlyConfigured("SECRET_KEY must be set to a secret value when DEBUG is off.")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.accounts",
    "apps.cases",
    "apps.models.apps.RegistryConfig",
    "apps.explain",
    "apps.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cxrplatform.urls"
WSGI_APPLICATION = "cxrplatform.wsgi.application"

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
                "apps.accounts.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": env_database("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded demo has a web process and a worker writing one file:
    # take the write lock at BEGIN and wait for it rather than fail.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "static")
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = env_path("MEDIA_ROOT", VAR_DIR / "media")
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads, heatmaps and model artifacts: local disk (MEDIA_ROOT) by default; with
# CXR_STORAGE=s3 an S3-compatible bucket (AWS S3, MinIO) through django-storages,
# so web and workers on several machines share them (README "Scaling").
CXR_STORAGE = env_str("CXR_STORAGE", default="filesystem").lower()
if CXR_STORAGE == "s3":
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_str("AWS_STORAGE_BUCKET_NAME"),
            # MinIO and other S3-compatible services: their URL; unset for AWS S3.
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env_str("AWS_S3_REGION_NAME", default="") or None,
            # Unset: boto3's own chain (instance role, ~/.aws, AWS_* variables).
            "access_key": env_str("AWS_ACCESS_KEY_ID", default="") or None,
            "secret_key": env_str("AWS_SECRET_ACCESS_KEY", default="") or None,
            "location": env_str("AWS_LOCATION", default=""),
            # Patient images: private objects, never overwritten, read only
            # through the authorised views (which stream them).
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
elif CXR_STORAGE != "filesystem":
    raise ImproperlyConfigured(f"CXR_STORAGE={CXR_STORAGE!r} must be 'filesystem' or 's3'.")

# Uploads. Limits live here so the form, the API and the tests share them.
CXR_MAX_UPLOAD_BYTES = env_int("CXR_MAX_UPLOAD_BYTES", default=30 * 1024 * 1024, min_value=1024)
CXR_MAX_IMAGES_PER_CASE = env_int("CXR_MAX_IMAGES_PER_CASE", default=20, min_value=1)
CXR_MIN_IMAGE_SIDE = env_int("CXR_MIN_IMAGE_SIDE", default=64, min_value=1)
CXR_MAX_IMAGE_PIXELS = env_int("CXR_MAX_IMAGE_PIXELS", default=60_000_000, min_value=10_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = CXR_MAX_UPLOAD_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = CXR_MAX_IMAGES_PER_CASE
# Out-of-distribution gate (apps.cases.validation): refuses uploads that are not
# frontal chest radiographs. A path to the fitted gate (`python -m ml ood-fit`);
# "off" turns the gate off (only for development with synthetic images).
_OOD_GATE = env_str("CXR_OOD_GATE", default=str(BASE_DIR / "ml" / "bundled" / "ood-gate.npz"))
CXR_OOD_GATE = None if _OOD_GATE.strip().lower() in {"", "off", "none"} else Path(_OOD_GATE)
# View check (apps.cases.validation, after the gate): refuses lateral views. A path
# to the fitted check (`python -m ml view-fit`); "off" turns it off.
_VIEW_CHECK = env_str("CXR_VIEW_CHECK", default=str(BASE_DIR / "ml" / "bundled" / "view-check.npz"))
CXR_VIEW_CHECK = None if _VIEW_CHECK.strip().lower() in {"", "off", "none"} else Path(_VIEW_CHECK)
# Lung segmentation model (apps.cases.lungs, worker only): every prediction gets
# the image's lung mask. "off" turns it off (predictions then say so).
_LUNG_MODEL = env_str(
    "CXR_LUNG_MODEL", default=str(BASE_DIR / "ml" / "bundled" / "lung-unet.keras")
)
CXR_LUNG_MODEL = None if _LUNG_MODEL.strip().lower() in {"", "off", "none"} else Path(_LUNG_MODEL)
# Key of the keyed hash (HMAC-SHA256) that turns a DICOM PatientID into the
# pseudonymous patient reference. Derived from SECRET_KEY when unset; set it
# explicitly so pseudonyms survive a SECRET_KEY rotation.
CXR_PSEUDONYM_KEY = env_str("CXR_PSEUDONYM_KEY", default="") or f"pseudonym:{SECRET_KEY}"

# Labelling and retraining (issue: the learning loop).
CXR_LABEL_AGREEMENT = env_int("CXR_LABEL_AGREEMENT", default=1, min_value=1, max_value=10)
CXR_RETRAIN_MIN_NEW_LABELS = env_int("CXR_RETRAIN_MIN_NEW_LABELS", default=20, min_value=1)
CXR_RETRAIN_CHECK_SECONDS = env_int("CXR_RETRAIN_CHECK_SECONDS", default=3600, min_value=10)
CXR_TRAINING_EPOCHS = env_int("CXR_TRAINING_EPOCHS", default=60, min_value=1)
# Promote a new candidate automatically only when no tracked metric (macro-F1,
# per-class precision and recall) is worse than production's on the same test split.
CXR_AUTO_PROMOTE = env_bool("CXR_AUTO_PROMOTE", default=False)
# Shortcut gate (apps.models.services.shortcut_gate_refusals), for every promotion:
# refuse a candidate whose lungs-blanked accuracy exceeds production's by more than
# this, or whose lowest per-source Grad-CAM mass in the lungs is below production's
# by more than this (both shares, 0..1).
CXR_GATE_BLANKED_ACC_TOLERANCE = env_float(
    "CXR_GATE_BLANKED_ACC_TOLERANCE", default=0.0, min_value=0.0, max_value=1.0
)
CXR_GATE_LUNG_MASS_TOLERANCE = env_float(
    "CXR_GATE_LUNG_MASS_TOLERANCE", default=0.0, min_value=0.0, max_value=1.0
)

# The model that `register_model --bundled` puts into the registry.
CXR_BUNDLED_MODEL = env_path(
    "CXR_BUNDLED_MODEL", BASE_DIR / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"
)

# Celery. The embedded default is kombu's filesystem transport: a real
# broker with no server, good for one machine. Production sets a redis:// URL.
CELERY_BROKER_URL = env_broker_url(
    "CELERY_BROKER_URL", default=env_str("REDIS_URL", default="filesystem://")
)
_BROKER_DIR = VAR_DIR / "broker"
# Hard limits per queue (seconds); soft limits are 0.9 x hard (cxrplatform.celery).
CXR_TASK_HARD_LIMITS = {
    "inference": env_int("CXR_INFERENCE_TIME_LIMIT", default=120, min_value=5),
    "explain": env_int("CXR_EXPLAIN_TIME_LIMIT", default=600, min_value=5),
    "training": env_int("CXR_TRAINING_TIME_LIMIT", default=6 * 3600, min_value=60),
    "default": env_int("CXR_DEFAULT_TIME_LIMIT", default=300, min_value=5),
}
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    # A message not acked within this time is redelivered. It must exceed
    # the longest hard time limit of the tasks a worker consumes, or a long
    # job would run twice. The override exists for the fault tests, which
    # kill a worker and must see the redelivery within seconds.
    "visibility_timeout": env_int(
        "CXR_BROKER_VISIBILITY_TIMEOUT",
        default=max(CXR_TASK_HARD_LIMITS.values()) + 600,
        min_value=1,
    ),
}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            # How often a worker looks for messages whose worker died (unacked
            # past the visibility timeout) and puts them back on their queue.
            "unacked_restore_interval": env_int(
                "CXR_BROKER_RESTORE_INTERVAL", default=10, min_value=1
            ),
            "unacked_restore_throttle": 1,
            # A publish while Redis is down fails in seconds instead of hanging.
            "socket_connect_timeout": 5,
        }
    )
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(_BROKER_DIR / "queue"),
            "data_folder_out": str(_BROKER_DIR / "queue"),
            "control_folder": str(_BROKER_DIR / "control"),
            "store_processed": False,
        }
    )
    for _folder in ("queue", "control"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# When the broker connection drops (Redis restarts), let running tasks finish:
# their result goes to the database, which does not need the broker. Cancelling
# them would rely on redelivery, and a Redis restarted without persistence has
# lost the message (tests/reliability/test_broker_restart.py).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A new pool process must report "up" within this many seconds or the worker
# kills it and forks another. Inference pool processes load TensorFlow and the
# model before that (CXR_WARM_MODEL); Celery's 4 s default is too short on a
# busy machine, and a pool process killed mid-task (OOM) was then replaced in an
# endless fork-and-kill loop (tests/reliability/test_worker_killed.py).
CELERY_WORKER_PROC_ALIVE_TIMEOUT = env_int(
    "CXR_WORKER_PROC_ALIVE_TIMEOUT", default=120, min_value=4
)
# How often beat looks for jobs stuck in `running` past their hard limit, and
# how old a `pending` job must be before the sweeper queues it again (it was
# lost: the broker was down when it was queued, or restarted without persistence).
CXR_STUCK_SWEEP_SECONDS = env_int("CXR_STUCK_SWEEP_SECONDS", default=300, min_value=1)
CXR_PENDING_REQUEUE_SECONDS = env_int("CXR_PENDING_REQUEUE_SECONDS", default=600, min_value=0)
# Test-only fault injection, off (0) by default: a job stays `running` this many
# seconds after the status commits, so a test can kill its worker mid-task.
CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS = env_int(
    "CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS", default=0, min_value=0, max_value=120
)
CELERY_BEAT_SCHEDULE = {
    # One sweeper for every registered job kind (cxrplatform.jobs.registered_jobs).
    "sweep-stuck-jobs": {
        "task": "cxrplatform.jobs.sweep_stuck_jobs",
        "schedule": float(CXR_STUCK_SWEEP_SECONDS),
        "options": {"queue": "default"},
    },
    "retrain-when-enough-labels": {
        "task": "apps.models.tasks.retrain_if_enough_labels",
        "schedule": float(CXR_RETRAIN_CHECK_SECONDS),
        "options": {"queue": "default"},
    },
}

# Cache: throttle counters must be shared by every web process, so production
# (a redis:// broker) keeps them in Redis; the embedded demo has one process
# and uses local memory. CACHE_URL overrides the choice.
CACHE_URL = env_str(
    "CACHE_URL",
    default=CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "",
)
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "cxr",
        }
    }
elif CACHE_URL in ("", "locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r} must be a redis:// URL or locmem://.")

# Protected media: files are streamed by Django unless a reverse proxy serves
# them from an internal location (nginx: `location /protected/ { internal; alias
# MEDIA_ROOT/; }` and CXR_PROTECTED_MEDIA_ACCEL_PREFIX=/protected/).
CXR_PROTECTED_MEDIA_ACCEL_PREFIX = env_str("CXR_PROTECTED_MEDIA_ACCEL_PREFIX", default="")
if CXR_PROTECTED_MEDIA_ACCEL_PREFIX and not CXR_PROTECTED_MEDIA_ACCEL_PREFIX.startswith("/"):
    raise ImproperlyConfigured(
        "CXR_PROTECTED_MEDIA_ACCEL_PREFIX must be an absolute path such as /protected/."
    )


def _rate(name: str, default: str) -> str:
    value = env_str(name, default=default)
    if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate such as 10/minute.")
    return value


REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous API request gets 401 with WWW-Authenticate: Token.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "apps.api.pagination.PageNumberPagination",
    "DEFAULT_FILTER_BACKENDS": [],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.api.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        # Per client address: obtaining API tokens and web log-ins (POST /login/).
        "auth": _rate("CXR_AUTH_THROTTLE_RATE", "10/minute"),
        "login": _rate("CXR_LOGIN_THROTTLE_RATE", "10/minute"),
    },
    "NUM_PROXIES": env_int("CXR_NUM_PROXIES", default=0, min_value=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "CXR platform API",
    "DESCRIPTION": (
        "Chest X-ray triage: cases, predictions, explanations, expert labels and the "
        "model registry. Authenticate with `Authorization: Token <key>` "
        "(POST /api/v1/auth/token/). Research prototype, not a diagnostic device."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.api.schema.empty_query_values_mean_any",
    ],
    # Interactive docs from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "cxrplatform.jobs.JobStatus",
        "CaseStatusEnum": "apps.cases.models.Case.STATUS_CHOICES",
        "VerdictEnum": "apps.cases.models.VERDICT_CHOICES",
        "ClassLabelEnum": "apps.cases.models.LABEL_CHOICES",
    },
}

LOG_LEVEL = env_str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
