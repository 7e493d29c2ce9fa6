"""Test settings: the project's settings with test-only overrides.

Every test run gets its own state directory (SQLite test database, broker
folders when no broker URL is given) so tests never touch a demo's data or
leave messages for a demo worker.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-production")
os.environ.setdefault("CXR_VAR_DIR", tempfile.mkdtemp(prefix="cxr-tests-"))

from cxrplatform.settings import *  # noqa: F403
from cxrplatform.settings import DATABASES, STATIC_ROOT, VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so the end-to-end test's worker process can open it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
