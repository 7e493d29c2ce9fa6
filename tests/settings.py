"""Test settings: the project's settings with test-only overrides.

Every test run gets its own state directory (SQLite test database, broker
folders when no broker URL is given) so tests never touch a demo's data or
leave messages for a demo worker.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-production")
os.environ.setdefault("CXR_PSEUDONYM_KEY", "tests-only-pseudonym-key-not-for-production")
# pytest-xdist: a worker process inherits the controller's environment, so it takes
# a state directory of its own here (SQLite file, filesystem broker), once: a Celery
# worker that a test starts inherits the marker and keeps the test's directory.
if "PYTEST_XDIST_WORKER" in os.environ and (
    os.environ["PYTEST_XDIST_WORKER"] != os.environ.get("CXR_TESTS_XDIST_WORKER")
):
    os.environ["CXR_VAR_DIR"] = tempfile.mkdtemp(
        prefix=f"cxr-tests-{os.environ['PYTEST_XDIST_WORKER']}-"
    )
    os.environ["CXR_TESTS_XDIST_WORKER"] = os.environ["PYTEST_XDIST_WORKER"]
if "PYTEST_XDIST_WORKER" in os.environ:
    # Parallel test processes share the cores: one TensorFlow thread pool thread each
    # (set before TensorFlow starts its pools). With two processes on two cores the
    # default pools (one thread per core each) oversubscribe and spin: tests/ml took
    # 129 s instead of 74 s. Results were unchanged (tests/ml passes either way).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
if "CXR_VAR_DIR" not in os.environ:  # a worker started by a test inherits the test's
    os.environ["CXR_VAR_DIR"] = tempfile.mkdtemp(prefix="cxr-tests-")

from cxrplatform.settings import *  # noqa: F403
from cxrplatform.settings import (
    BASE_DIR,
    CACHES,
    CELERY_BROKER_TRANSPORT_OPTIONS,
    CELERY_BROKER_URL,
    DATABASES,
    STATIC_ROOT,
    VAR_DIR,
)

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

# The tiny bootstrap model was fitted on the 18 fixture images, so tests can
# check the serving path end to end against known answers. The shipped default
# model (ml/bundled/) has tests of its own in tests/ml/test_classifier.py.
CXR_BUNDLED_MODEL = BASE_DIR / "tests" / "fixtures" / "models" / "cxr-tiny.keras"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so the end-to-end test's worker process can open it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

# The test client and the browser tests' live server speak plain HTTP (the production
# default redirects it to HTTPS: tests/test_production_settings.py).
SECURE_SSL_REDIRECT = False
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
# Close connections after each request: a live-server request thread that kept
# its connection would stop the test database from being dropped.
DATABASES["default"]["CONN_MAX_AGE"] = 0

if XDIST_WORKER:
    # xdist workers share one Redis (CI's DB number) when CELERY_BROKER_URL is set: keys
    # of their own, so one worker's Celery worker never takes another's messages and
    # throttle counts are not shared. The test database is per worker already
    # (pytest-django adds the _gwN suffix).
    if "CXR_TESTS_KEYPREFIX" in os.environ:  # a Celery worker that a test started
        if os.environ["CXR_TESTS_KEYPREFIX"]:
            CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = os.environ["CXR_TESTS_KEYPREFIX"]
    elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = f"cxr-tests-{XDIST_WORKER}:"
    if "KEY_PREFIX" in CACHES["default"]:
        CACHES["default"]["KEY_PREFIX"] = f"cxr-tests-{XDIST_WORKER}"

# The burned-in text check (Tesseract, about a second per upload) is off for the suite:
# its own tests (tests/cases/test_burned_text.py) turn it on, and the fixture films
# with real burned-in text ("PORTABLE") would otherwise be held out of labelling.
CXR_TEXT_CHECK = False
