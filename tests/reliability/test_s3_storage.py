"""S3-compatible storage (CXR_STORAGE=s3) end to end against a real S3 server process.

There is no MinIO here (no container engine), so the S3 service is moto's
*server mode*: a separate process speaking the S3 HTTP API on a loopback port
(not moto's in-process mocks). Django talks to it through django-storages and
boto3 exactly as it would to MinIO: the endpoint URL, a bucket and keys.
Skipped where moto is not installed.
"""

from __future__ import annotations

import importlib.util
import io
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from django.http import StreamingHttpResponse
from knox.models import AuthToken
from PIL import Image
from rest_framework.test import APIClient

from apps.cases import services
from apps.cases.models import Prediction
from apps.explain.models import Explanation
from apps.models.serving import local_artifact_path
from cxrplatform.jobs import run_job_now
from tests.conftest import IMAGES, stored_files, upload_of

pytestmark = pytest.mark.django_db

BUCKET = "cxr-test-media"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server(tmp_path):
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = _free_port()
    log = (tmp_path / "s3.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"S3 server did not start: {(tmp_path / 's3.log').read_text()}")
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_storage(s3_server, settings):
    import boto3

    options = {
        "bucket_name": BUCKET,
        "endpoint_url": s3_server,
        "region_name": "us-east-1",
        "access_key": "test-key",
        "secret_key": "test-secret",
        "default_acl": None,
        "querystring_auth": True,
        "file_overwrite": False,
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
    }
    return client


def _keys(client) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


@pytest.mark.slow
def test_upload_classification_explanation_and_download_go_through_s3(
    s3_storage, clinician, media_root, tmp_path, settings
):
    from django.conf import settings as django_settings

    from apps.models.services import register_artifact

    settings.VAR_DIR = tmp_path / "var"
    version = register_artifact(
        artifact_path=django_settings.CXR_BUNDLED_MODEL, make_production=True
    )
    assert version.artifact.name in _keys(s3_storage)
    # The worker needs a local file for Keras: downloaded once into the model cache.
    local = local_artifact_path(version)
    assert local.is_file()
    assert local.is_relative_to(tmp_path / "var" / "model-cache")

    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    image = case.images.get()
    assert image.file.name in _keys(s3_storage)
    assert stored_files(media_root) == []  # nothing on local disk

    prediction = run_job_now(Prediction, Prediction.objects.get(image=image).pk)
    assert prediction is not None
    assert prediction.status == "done", prediction.error
    explanation = run_job_now(Explanation, Explanation.objects.get(image=image).pk)
    assert explanation is not None
    assert explanation.status == "done", explanation.error
    keys = _keys(s3_storage)
    assert {explanation.heatmap.name, explanation.overlay.name} <= keys
    body = s3_storage.get_object(Bucket=BUCKET, Key=explanation.heatmap.name)["Body"].read()
    assert np.load(io.BytesIO(body)).shape == (128, 128)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=clinician)[1]}")
    response = client.get(f"/api/v1/images/{image.pk}/file/")
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    served = b"".join(response.streaming_content)  # stored re-encoded: the pixels, as PNG
    assert served == s3_storage.get_object(Bucket=BUCKET, Key=image.file.name)["Body"].read()
    with Image.open(io.BytesIO(served)) as png, Image.open(IMAGES / "2168a917.jpg") as sent:
        assert png.format == "PNG"
        assert png.tobytes() == sent.tobytes()
    overlay = client.get(f"/api/v1/explanations/{explanation.pk}/overlay/")
    assert overlay.status_code == 200
    assert isinstance(overlay, StreamingHttpResponse)
    assert b"".join(overlay.streaming_content)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_s3_storage_is_chosen_by_environment(tmp_path):
    """CXR_STORAGE=s3 selects django-storages' S3 backend with the bucket and endpoint given."""
    code = (
        "from django.conf import settings; o = settings.STORAGES['default']; "
        "print(o['BACKEND'], o['OPTIONS']['bucket_name'], o['OPTIONS']['endpoint_url'])"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "cxrplatform.settings",
        "DEBUG": "1",
        "CXR_VAR_DIR": str(tmp_path),
        "CXR_STORAGE": "s3",
        "AWS_STORAGE_BUCKET_NAME": "media",
        "AWS_S3_ENDPOINT_URL": "http://minio:9000",
    }
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["storages.backends.s3.S3Storage", "media", "http://minio:9000"]
    env.pop("AWS_STORAGE_BUCKET_NAME")
    failed = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode != 0
    assert "AWS_STORAGE_BUCKET_NAME must be set" in failed.stderr
