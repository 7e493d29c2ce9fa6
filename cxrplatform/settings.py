"""Django settings, read from the environment.

Defaults are the *embedded* configuration: SQLite and Celery's filesystem
transport, so ``make demo`` runs on a machine with neither PostgreSQL nor
Redis. Production sets ``DATABASE_URL`` and ``CELERY_BROKER_URL`` (see
README, "Configuration"). Every value goes through a typed helper in
``cxrplatform.env`` that fails loudly on bad input.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from csp.constants import NONE, SELF
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
# Where users reach the web app (scheme and host, e.g. https://cxr.hospital.example):
# links in e-mails (training notifications) are made absolute with it.
CXR_PUBLIC_URL = env_str("CXR_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # API tokens: stored hashed, expiring, several per user (docs/api.md, "Tokens").
    "knox",
    # Per-account lockout after repeated failed log-ins (docs/operations.md).
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Prometheus request metrics (middleware below; /metrics: cxrplatform.metrics).
    "django_prometheus",
    "apps.accounts",
    "apps.cases",
    "apps.models.apps.RegistryConfig",
    "apps.explain",
    "apps.api",
    # Backups and restores (manage.py backup / restore).
    "apps.ops",
    # The synthetic chest X-ray generator's page and sample grids.
    "apps.generator",
    # Sites: membership, local validation studies and site operating points.
    "apps.sites",
    # The reading room: radiologists' site worklist, viewer and signed reports.
    "apps.reading",
    # The PACS connection: DICOM listener, protected return mapping, results returned.
    "apps.pacs",
    # Start-up of every process: each app's Celery tasks registered (cxrplatform.apps).
    "cxrplatform.apps.PlatformConfig",
]

MIDDLEWARE = [
    # First and last: django-prometheus times every request through the whole chain.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # The request id of every log line (X-Request-ID), carried on to the worker.
    "cxrplatform.logcontext.RequestIdMiddleware",
    # /healthz, /readyz and /metrics, before host validation and the HTTPS redirect
    # (probes and Prometheus speak plain HTTP to the container's own address).
    "cxrplatform.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # gzip for JSON (the API) only; before everything that could still change the body.
    "cxrplatform.middleware.JsonGZipMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Outside DEBUG, a user whose password must change (the demo users, users created
    # with a password by a site admin) gets only the password change page until they do.
    "apps.accounts.passwords.PasswordChangeRequiredMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Content-Security-Policy header (django-csp; CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    # Cache-Control: no-store on every response that sets no caching of its own
    # (after WhiteNoise, which answers static files before this runs).
    "cxrplatform.middleware.NoStoreMiddleware",
    # Turns a locked-out log-in (any page or the token endpoint) into a 429.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
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
# django-axes first: it refuses a locked account before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Lockout: after CXR_LOGIN_FAILURE_LIMIT failed log-ins for one username (web log-in,
# admin log-in and the API token endpoint together) the account is refused for
# CXR_LOGIN_LOCKOUT_MINUTES, counted again from each further attempt; a success
# resets the count. Per address, the "login" and "auth" throttles below apply as well.
AXES_FAILURE_LIMIT = env_int("CXR_LOGIN_FAILURE_LIMIT", default=5, min_value=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("CXR_LOGIN_LOCKOUT_MINUTES", default=15, min_value=1))
AXES_LOCKOUT_PARAMETERS = ["username"]
# axes.W006 asks for "ip_address" in the lockout parameters. Locking an address after 5
# failures would lock a whole hospital behind one NAT address; per address, the
# "login"/"auth" throttles (10/minute) limit guessing across usernames instead.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "apps.accounts.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "apps.accounts.lockout.client_address"
# The audit log (apps.accounts.models.AuditEvent) records lockouts; axes keeps its
# own rows of failed attempts (admin: "Access attempts") but no log of every success.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False
# Password reset and invitations by e-mail: the console (the demo prints the mail) with
# DEBUG=1, SMTP from the environment otherwise (docs/operations.md "Accounts").
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env_int("EMAIL_PORT", default=25, min_value=1, max_value=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", default=False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("Set EMAIL_USE_TLS or EMAIL_USE_SSL, not both.")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", default=10, min_value=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", default="cxr-platform@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# How long a password reset or invitation link works.
PASSWORD_RESET_TIMEOUT = 3600 * env_int(
    "CXR_PASSWORD_RESET_HOURS", default=72, min_value=1, max_value=24 * 30
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Session idle timeout: a web session ends after CXR_SESSION_IDLE_MINUTES without a request
# (each request starts the count again) and when the browser closes.
CXR_SESSION_IDLE_MINUTES = env_int(
    "CXR_SESSION_IDLE_MINUTES", default=30, min_value=1, max_value=24 * 60
)
SESSION_COOKIE_AGE = CXR_SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

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
# Stored images, masks and heatmaps on local disk: readable by the platform's user only.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
DATA_UPLOAD_MAX_NUMBER_FILES = CXR_MAX_IMAGES_PER_CASE
# The whole request body: every file at its limit, plus 1 MB for the form. A larger
# Content-Length is refused before the body is read, and a file that grows past
# CXR_MAX_UPLOAD_BYTES stops the upload there (apps.cases.uploads); set the proxy's
# limit (nginx client_max_body_size) to the same value (docs/operations.md).
CXR_MAX_REQUEST_BYTES = env_int(
    "CXR_MAX_REQUEST_BYTES",
    default=CXR_MAX_UPLOAD_BYTES * CXR_MAX_IMAGES_PER_CASE + 1024 * 1024,
    min_value=1024,
)
FILE_UPLOAD_HANDLERS = [
    "apps.cases.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Uploaded pixels are decoded in a child process (apps.cases.decoding) with this
# address-space ceiling and this time limit.
CXR_DECODE_MEMORY_MB = env_int("CXR_DECODE_MEMORY_MB", default=2048, min_value=256)
CXR_DECODE_TIMEOUT_S = env_int("CXR_DECODE_TIMEOUT_S", default=60, min_value=1)
# The child is forked by a warm decoder server that has imported the decoders once
# (apps.cases.decoder_server); 0: a new interpreter per upload (~0.4 s more CPU each).
CXR_DECODE_SERVER = env_bool("CXR_DECODE_SERVER", default=True)
# Burned-in text check (ml.serving.burned_text, in the decoder child): an image with
# text in its margins (a name, date or ID on the film) is held for review. "auto" (the
# default): on where Debian's tesseract-ocr is installed; "on": required (start-up
# fails without it); "off".
_TEXT_CHECK = env_str("CXR_TEXT_CHECK", default="auto").strip().lower()
if _TEXT_CHECK not in {"auto", "on", "off"}:
    raise ImproperlyConfigured(f"CXR_TEXT_CHECK must be auto, on or off, not {_TEXT_CHECK!r}.")
if _TEXT_CHECK == "on" and shutil.which("tesseract") is None:
    raise ImproperlyConfigured(
        "CXR_TEXT_CHECK=on but the tesseract command is not installed "
        "(apt-get install tesseract-ocr)."
    )
CXR_TEXT_CHECK = _TEXT_CHECK == "on" or (
    _TEXT_CHECK == "auto" and shutil.which("tesseract") is not None
)
# Out-of-distribution gate (apps.cases.validation): refuses uploads that are not
# frontal chest radiographs. A path to the fitted gate (`python -m ml ood fit`);
# "off" turns the gate off (only for development with synthetic images).
_OOD_GATE = env_str("CXR_OOD_GATE", default=str(BASE_DIR / "ml" / "bundled" / "ood-gate.npz"))
CXR_OOD_GATE = None if _OOD_GATE.strip().lower() in {"", "off", "none"} else Path(_OOD_GATE)
# View check (apps.cases.validation, after the gate): refuses lateral views. A path
# to the fitted check (`python -m ml view fit`); "off" turns it off.
_VIEW_CHECK = env_str("CXR_VIEW_CHECK", default=str(BASE_DIR / "ml" / "bundled" / "view-check.npz"))
CXR_VIEW_CHECK = None if _VIEW_CHECK.strip().lower() in {"", "off", "none"} else Path(_VIEW_CHECK)
# Modality check (apps.cases.validation, in the decoder child): refuses a CT slice
# uploaded as an X-ray and an X-ray uploaded as CT. A path to the fitted check
# (`python -m ml ct-modality fit`); "off" turns it off.
_MODALITY_CHECK = env_str(
    "CXR_MODALITY_CHECK", default=str(BASE_DIR / "ml" / "bundled" / "ct-modality.npz")
)
CXR_MODALITY_CHECK = (
    None if _MODALITY_CHECK.strip().lower() in {"", "off", "none"} else Path(_MODALITY_CHECK)
)
# Lung segmentation model (apps.cases.lungs, worker only): every prediction gets
# the image's lung mask. "off" turns it off (predictions then say so).
_LUNG_MODEL = env_str(
    "CXR_LUNG_MODEL", default=str(BASE_DIR / "ml" / "bundled" / "lung-unet.keras")
)
CXR_LUNG_MODEL = None if _LUNG_MODEL.strip().lower() in {"", "off", "none"} else Path(_LUNG_MODEL)
# How the inference queue runs the classifier and the lung U-Net: "litert" (the .tflite
# converted at registration, run by the LiteRT interpreter; the worker never imports
# TensorFlow) or "keras". A version without a converted file is served by Keras, with a
# warning in the worker's log. Explanation and training workers always use Keras.
CXR_INFERENCE_RUNTIME = env_str("CXR_INFERENCE_RUNTIME", default="litert").strip().lower()
if CXR_INFERENCE_RUNTIME not in {"litert", "keras"}:
    raise ImproperlyConfigured(
        f"CXR_INFERENCE_RUNTIME={CXR_INFERENCE_RUNTIME!r} must be 'litert' or 'keras'."
    )
# Interpreter threads per LiteRT model (one inference pool process per core: 1).
CXR_INFERENCE_THREADS = env_int("CXR_INFERENCE_THREADS", default=1, min_value=1, max_value=64)
# Key of the keyed hash (HMAC-SHA256) that turns a DICOM PatientID into the
# pseudonymous patient reference, and of the replaced UIDs and per-patient date
# shifts (apps.cases.deidentify). Required when DEBUG is off, a secret of its own:
# never derived from SECRET_KEY, which may be rotated (a new pseudonym key gives
# returning patients new pseudonyms), and long enough that patient IDs cannot be
# recovered by trying keys.
_DEV_PSEUDONYM_KEY = "insecure-dev-pseudonym-key-only-for-the-embedded-demo"
CXR_PSEUDONYM_KEY = env_str("CXR_PSEUDONYM_KEY", default=_DEV_PSEUDONYM_KEY if DEBUG else "")
if not DEBUG:
    _pseudonym_problem = (
        "is not set" if not CXR_PSEUDONYM_KEY.strip()
        else "is the embedded demo's key" if CXR_PSEUDONYM_KEY == _DEV_PSEUDONYM_KEY
        else "is shorter than 32 characters" if len(CXR_PSEUDONYM_KEY) < 32
        else "is the same as SECRET_KEY" if CXR_PSEUDONYM_KEY == SECRET_KEY
        else ""
    )  # fmt: skip
    if _pseudonym_problem:
        raise ImproperlyConfigured(
            f"CXR_PSEUDONYM_KEY {_pseudonym_problem}: when DEBUG is off it must be set to "
            "a secret of its own, at least 32 characters (e.g. `openssl rand -hex 32`). It "
            "keys the DICOM patient pseudonyms: keep it stable and apart from SECRET_KEY."
        )

# Labelling and retraining (issue: the learning loop).
# Agreement policy (apps.cases.labelling, docs/operations.md "Labelling"): "unanimous"
# (CXR_LABEL_AGREEMENT readers agree and none dissents), "majority" (once that many
# readers have read, more than half of the readings agree) or "adjudication"
# (unanimous, and an adjudicator decides disputed images).
CXR_LABEL_POLICY = env_str("CXR_LABEL_POLICY", default="unanimous").lower()
if CXR_LABEL_POLICY not in {"unanimous", "majority", "adjudication"}:
    raise ImproperlyConfigured(
        f"CXR_LABEL_POLICY={CXR_LABEL_POLICY!r}: use unanimous, majority or adjudication."
    )
CXR_LABEL_AGREEMENT = env_int("CXR_LABEL_AGREEMENT", default=1, min_value=1, max_value=10)
# Show the model's prediction to a reader after their first answer (they may then change
# it); off by default: the labelling page never shows it (anchoring bias).
CXR_LABEL_SHOW_MODEL = env_bool("CXR_LABEL_SHOW_MODEL", default=False)
# Bootstrap resamples behind each interval of the reader agreement page.
CXR_AGREEMENT_BOOTSTRAP = env_int(
    "CXR_AGREEMENT_BOOTSTRAP", default=1000, min_value=100, max_value=20000
)
CXR_RETRAIN_MIN_NEW_LABELS = env_int("CXR_RETRAIN_MIN_NEW_LABELS", default=20, min_value=1)
CXR_RETRAIN_CHECK_SECONDS = env_int("CXR_RETRAIN_CHECK_SECONDS", default=3600, min_value=10)
CXR_TRAINING_EPOCHS = env_int("CXR_TRAINING_EPOCHS", default=60, min_value=1)
# Promote a new candidate automatically only when no tracked metric (macro-F1,
# per-class precision and recall) is worse beyond chance than production's on the same
# test images (paired bootstrap) and macro-F1 is not lower.
CXR_AUTO_PROMOTE = env_bool("CXR_AUTO_PROMOTE", default=False)
# A candidate and production compared on fewer test images than this get no
# better/worse verdict (ml.models.paired), and the automatic promotion refuses.
CXR_COMPARE_MIN_IMAGES = env_int("CXR_COMPARE_MIN_IMAGES", default=30, min_value=1)
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
# How much lower a candidate's share of held-out-source normals called normal may be.
CXR_GATE_HELD_OUT_TOLERANCE = env_float(
    "CXR_GATE_HELD_OUT_TOLERANCE", default=0.0, min_value=0.0, max_value=1.0
)

# The model that `register_model --bundled` puts into the registry (cxr-lite0:
# EfficientNet-Lite0 on lung crops; `make train` reproduces it).
CXR_BUNDLED_MODEL = env_path(
    "CXR_BUNDLED_MODEL", BASE_DIR / "ml" / "bundled" / "cxr-lite0" / "cxr-lite0.keras"
)

# The CT segmenter that `register_model --bundled --task ct_segmentation` registers
# (`python -m ml ct train` makes it).
CXR_BUNDLED_CT_MODEL = env_path(
    "CXR_BUNDLED_CT_MODEL", BASE_DIR / "ml" / "bundled" / "ct-seg" / "ct-seg.keras"
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
    "segmentation": env_int("CXR_SEGMENTATION_TIME_LIMIT", default=120, min_value=5),
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
            # How often an idle worker looks in its queue folders. Kombu's 1 s default
            # added up to a second to each demo prediction (p50 0.46-1.16 s; 0.35 s at
            # 0.1 s); listing a small folder ten times a second per worker is nothing.
            "polling_interval": 0.1,
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
# How often a job may be sent again by the sweeper or claimed by a worker before it is
# failed with the reason (a message that kills its worker, or one never delivered):
# redeliveries are bounded. An explicit retry starts the count again.
CXR_JOB_MAX_ATTEMPTS = env_int("CXR_JOB_MAX_ATTEMPTS", default=3, min_value=1)
# Test-only fault injection, off (0) by default: a job stays `running` this many
# seconds after the status commits, so a test can kill its worker mid-task.
CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS = env_int(
    "CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS", default=0, min_value=0, max_value=120
)
# Retention (apps.cases.retention): a case its clinician deletes disappears at once; its
# files and rows are purged this many days later (0: at the next purge run) by beat,
# every CXR_PURGE_CHECK_SECONDS.
CXR_DELETED_CASE_RETENTION_DAYS = env_int(
    "CXR_DELETED_CASE_RETENTION_DAYS", default=7, min_value=0, max_value=3650
)
CXR_PURGE_CHECK_SECONDS = env_int("CXR_PURGE_CHECK_SECONDS", default=3600, min_value=10)
# Drift monitoring (apps.sites.drift; docs/operations.md "Drift monitoring"): a site's
# rolling window is its last CXR_DRIFT_WINDOW_PREDICTIONS predictions within
# CXR_DRIFT_WINDOW_DAYS days, checked by beat every CXR_DRIFT_CHECK_SECONDS; a feature with
# fewer than CXR_DRIFT_MIN_IMAGES values in the window is not judged.
CXR_DRIFT_WINDOW_PREDICTIONS = env_int("CXR_DRIFT_WINDOW_PREDICTIONS", default=200, min_value=1)
CXR_DRIFT_WINDOW_DAYS = env_int("CXR_DRIFT_WINDOW_DAYS", default=30, min_value=1, max_value=3650)
CXR_DRIFT_CHECK_SECONDS = env_int("CXR_DRIFT_CHECK_SECONDS", default=3600, min_value=10)
CXR_DRIFT_MIN_IMAGES = env_int("CXR_DRIFT_MIN_IMAGES", default=20, min_value=2)
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
    # Files (and rows) of cases deleted more than CXR_DELETED_CASE_RETENTION_DAYS ago.
    "purge-deleted-cases": {
        "task": "apps.cases.tasks.purge_deleted_cases",
        "schedule": float(CXR_PURGE_CHECK_SECONDS),
        "options": {"queue": "default"},
    },
    # Each site's drift against the production classifier's reference (apps.sites.drift).
    "check-site-drift": {
        "task": "apps.sites.tasks.check_drift",
        "schedule": float(CXR_DRIFT_CHECK_SECONDS),
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
        "knox.auth.TokenAuthentication",
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

# API tokens (django-rest-knox): only a SHA-512 digest is stored; each expires
# CXR_API_TOKEN_TTL_HOURS after it was issued; changing the password revokes them all.
REST_KNOX = {
    "TOKEN_TTL": timedelta(
        hours=env_int("CXR_API_TOKEN_TTL_HOURS", default=24, min_value=1, max_value=24 * 365)
    ),
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
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
# "json": one JSON object per line with request_id, user_id, task_id and job_id
# (cxrplatform.logcontext), web and workers alike; "plain": text lines.
CXR_LOG_FORMAT = env_str("CXR_LOG_FORMAT", default="plain").strip().lower()
if CXR_LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"CXR_LOG_FORMAT={CXR_LOG_FORMAT!r} must be 'plain' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "cxrplatform.logcontext.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "cxrplatform.logcontext.json_formatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": CXR_LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # django-axes logs every log-in at INFO; its lockout warnings are what operators need.
    "loggers": {
        "axes": {"level": "WARNING"},
        # Decoders quote what they read: Pillow logs EXIF and PNG chunk values at DEBUG,
        # pydicom logs invalid element values as warnings. Uploads may hold patient
        # identifiers, so neither reaches the logs, whatever LOG_LEVEL says.
        "PIL": {"level": "INFO"},
        "pydicom": {"level": "ERROR"},
    },
}

# Health and metrics (cxrplatform.health, cxrplatform.metrics; docs/operations.md
# "Monitoring"). /metrics answers a request from these networks (the client address the
# throttles see: CXR_NUM_PROXIES applies) or one with `Authorization: Bearer <token>`.
CXR_METRICS_TOKEN = env_str("CXR_METRICS_TOKEN", default="")
if CXR_METRICS_TOKEN and len(CXR_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("CXR_METRICS_TOKEN must be at least 16 characters.")
# "none": the token only.
_METRICS_NETWORKS = env_list("CXR_METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"])
try:
    CXR_METRICS_ALLOWED_NETWORKS = [
        ipaddress.ip_network(value, strict=False)
        for value in _METRICS_NETWORKS
        if value.lower() != "none"
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"CXR_METRICS_ALLOWED_NETWORKS: {exc}") from None
# Seconds a scrape waits for the workers' answers to a control ping (cxr_workers).
CXR_METRICS_INSPECT_TIMEOUT = env_float(
    "CXR_METRICS_INSPECT_TIMEOUT", default=1.0, min_value=0.1, max_value=30.0
)
# /readyz remembers a passed migration check, storage round trip and model-file hash this long.
CXR_READYZ_CACHE_SECONDS = env_int("CXR_READYZ_CACHE_SECONDS", default=60, min_value=0)

# Content-Security-Policy (django-csp): scripts, styles, images and connections from this
# site only; no inline script or style anywhere (the templates use static files), no
# plugins, no framing. The API docs pages relax style-src for their own inline styles
# (apps/api/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        # blob: the upload page's thumbnails of the chosen files (URL.createObjectURL).
        "img-src": [SELF, "blob:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}


def _proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """'X-Forwarded-Proto: https' -> ('HTTP_X_FORWARDED_PROTO', 'https'); '' -> None."""
    if not value.strip():
        return None
    match = re.fullmatch(r"\s*([A-Za-z0-9-]+)\s*:\s*(\S+)\s*", value)
    if match is None:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={value!r} must read 'Header-Name: value', e.g. "
            "'X-Forwarded-Proto: https' (the header your TLS proxy sets on HTTPS requests)."
        )
    return "HTTP_" + match[1].upper().replace("-", "_"), match[2]


# HTTPS. Set only behind a TLS proxy that overwrites this header on every request:
# Django then trusts it to tell HTTPS requests apart (docs/operations.md "HTTPS").
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header(env_str("SECURE_PROXY_SSL_HEADER", default=""))

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600, min_value=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
    if not SECURE_HSTS_PRELOAD:
        # security.W021 asks for the HSTS preload list: a commitment, for the domain and
        # every subdomain, that the operator makes (and hospital intranet names cannot
        # be listed); SECURE_HSTS_PRELOAD=1 opts in.
        SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "security.W021"]

# The PACS connection (apps.pacs; docs/operations.md "Connecting a PACS"). The DICOM
# listener (manage.py dicom_listener) takes C-STORE as CXR_DICOM_AE_TITLE on
# CXR_DICOM_BIND:CXR_DICOM_PORT from the AE@address pairs of CXR_DICOM_ALLOWED ("*" for
# any AE title or address); each study becomes a case of CXR_DICOM_SERVICE_USER. Results
# go back by C-STORE to CXR_PACS_DESTINATION (AE@host:port; empty: nothing is returned).
CXR_DICOM_AE_TITLE = env_str("CXR_DICOM_AE_TITLE", default="CXRAI")
CXR_DICOM_BIND = env_str("CXR_DICOM_BIND", default="127.0.0.1")
CXR_DICOM_PORT = env_int("CXR_DICOM_PORT", default=11112, min_value=1)
CXR_DICOM_ALLOWED = env_list("CXR_DICOM_ALLOWED", default=["*@127.0.0.1"])
CXR_DICOM_SERVICE_USER = env_str("CXR_DICOM_SERVICE_USER", default="pacs")
# Where /readyz finds the listener (host:port) for its C-ECHO; empty: no such check.
CXR_DICOM_LISTENER_CHECK = env_str("CXR_DICOM_LISTENER_CHECK", default="")
CXR_PACS_DESTINATION = env_str("CXR_PACS_DESTINATION", default="")
CXR_PACS_RETURN_MAX_ATTEMPTS = env_int("CXR_PACS_RETURN_MAX_ATTEMPTS", default=10, min_value=1)
CXR_PACS_RETURN_BACKOFF_SECONDS = env_float(
    "CXR_PACS_RETURN_BACKOFF_SECONDS", default=5.0, min_value=0.0
)
# The protected mapping (original study UIDs and patient, for the return path only).
CXR_PACS_MAPPING_RETENTION_DAYS = env_int(
    "CXR_PACS_MAPPING_RETENTION_DAYS", default=30, min_value=1, max_value=3650
)
CXR_PACS_MAPPING_KEY = env_str("CXR_PACS_MAPPING_KEY", default="")
# The root of the UIDs of the objects sent back (empty: pydicom's).
CXR_PACS_UID_PREFIX = env_str("CXR_PACS_UID_PREFIX", default="")
CELERY_BEAT_SCHEDULE["purge-expired-pacs-links"] = {
    "task": "apps.pacs.tasks.purge_expired_pacs_links",
    "schedule": 24 * 3600.0,
    "options": {"queue": "default"},
}
# The DICOMweb pull (apps.pacs.dicomweb) for a PACS that does not push: every
# CXR_PACS_PULL_SECONDS a QIDO-RS search of CXR_PACS_DICOMWEB_URL for chest X-ray studies
# of the last CXR_PACS_PULL_DAYS days, each new one retrieved by WADO-RS (at most
# CXR_PACS_PULL_MAX_STUDIES a run). CXR_PACS_DICOMWEB_AUTHORIZATION: its Authorization
# header. A CXR_PACS_DESTINATION of http(s):// gets the results by STOW-RS.
CXR_PACS_DICOMWEB_URL = env_str("CXR_PACS_DICOMWEB_URL", default="")
CXR_PACS_DICOMWEB_AUTHORIZATION = env_str("CXR_PACS_DICOMWEB_AUTHORIZATION", default="")
CXR_PACS_PULL_SECONDS = env_int("CXR_PACS_PULL_SECONDS", default=60, min_value=5)
CXR_PACS_PULL_DAYS = env_int("CXR_PACS_PULL_DAYS", default=1, min_value=1, max_value=3650)
CXR_PACS_PULL_MAX_STUDIES = env_int("CXR_PACS_PULL_MAX_STUDIES", default=20, min_value=1)
if CXR_PACS_DICOMWEB_URL:
    CELERY_BEAT_SCHEDULE["pull-dicomweb-studies"] = {
        "task": "apps.pacs.tasks.pull_dicomweb_studies",
        "schedule": float(CXR_PACS_PULL_SECONDS),
        "options": {"queue": "default"},
    }
# Receiving by STOW-RS (apps.pacs.stow): the listener also serves POST /studies on
# CXR_DICOM_BIND:CXR_DICOMWEB_STOW_PORT (0: off) to the addresses of CXR_DICOM_ALLOWED,
# with Authorization: Bearer CXR_DICOMWEB_STOW_TOKEN where that is set.
CXR_DICOMWEB_STOW_PORT = env_int("CXR_DICOMWEB_STOW_PORT", default=0, min_value=0)
CXR_DICOMWEB_STOW_TOKEN = env_str("CXR_DICOMWEB_STOW_TOKEN", default="")
