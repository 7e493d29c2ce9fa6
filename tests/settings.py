"""Test settings: the project's settings with test-only overrides.

Every test run gets its own state directory (SQLite test database, broker
folders when no broker URL is given) so tests never touch a demo's data or
leave messages for a demo worker.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-production")
if "CXR_VAR_DIR" not in os.environ:  # a worker started by a test inherits the test's
    os.environ["CXR_VAR_DIR"] = tempfile.mkdtemp(prefix="cxr-tests-")

from cxrplatform.settings import *  # noqa: F403
from cxrplatform.settings import BASE_DIR, DATABASES, STATIC_ROOT, VAR_DIR

# The tiny bootstrap model was fitted on the 18 fixture images, so tests can
# check the serving path end to end against known answers. The shipped default
# model (ml/bundled/) has tests of its own in tests/ml/test_classifier.py.
CXR_BUNDLED_MODEL = BASE_DIR / "tests" / "fixtures" / "models" / "cxr-tiny.keras"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so the end-to-end test's worker process can open it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
# Close connections after each request: a live-server request thread that kept
# its connection would stop the test database from being dropped.
DATABASES["default"]["CONN_MAX_AGE"] = 0
