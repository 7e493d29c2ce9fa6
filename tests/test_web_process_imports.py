"""The web process must start fast and small: no TensorFlow in it."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PROBE = """
import importlib, json, pkgutil, sys
import django
django.setup()
from django.urls import get_resolver
from django.test import Client

resolver = get_resolver()
resolver.url_patterns  # imports every urls and views module
import apps
for mod in pkgutil.walk_packages(apps.__path__, "apps."):
    name = mod.name
    if ".migrations" in name or name.endswith(("inference", "serving")):
        continue  # worker-only modules, imported by tasks at run time
    importlib.import_module(name)
import cxrplatform.wsgi
response = Client().get("/login/")
print(json.dumps({
    "status": response.status_code,
    "heavy": sorted(m for m in ("tensorflow", "keras", "tf_explain", "cv2") if m in sys.modules),
}))
"""


@pytest.mark.slow
def test_web_process_does_not_import_tensorflow(tmp_path):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        CXR_VAR_DIR=str(tmp_path),
        ALLOWED_HOSTS="testserver,localhost",
    )
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 200
    assert report["heavy"] == []
