from __future__ import annotations

import csv
import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.factories import UserFactory

pytest_plugins = ["tests.workers"]


def _restore_role_groups(sender, **kwargs):
    """Transactional tests flush the database after each test, which removes the
    role groups the data migration made; flush re-emits post_migrate, so put them
    back here, or later tests would create users without roles."""
    from django.apps import apps
    from django.contrib.auth.models import Group, Permission

    # post_migrate is sent once per app that has a models module; wait for the last
    # of those: its signal comes after every permission exists.
    with_models = [config for config in apps.get_app_configs() if config.models_module]
    if sender is not with_models[-1]:
        return
    from apps.accounts.services import sync_role_groups

    sync_role_groups(Group, Permission)


def pytest_configure(config):
    from django.db.models.signals import post_migrate

    post_migrate.connect(_restore_role_groups, dispatch_uid="tests-restore-role-groups")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: ``-n 2 --dist loadgroup``) the tests that start
    Celery workers or drive a browser are to run one after another on one xdist worker,
    so that at most one of those heavy process trees runs at a time. With pytest 9.2 and
    pytest-xdist 3.8 the group has no effect (xdist renames ``item._nodeid``, which pytest
    9 no longer reads): those tests are shared out like the rest, and pass that way."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("worker") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("processes"))


# `make test-fast` keeps out tests marked `slow` (half a second or more each on 2 cores).
# A test that is not marked and whose own call took longer than this is named at the end
# of the run, so the fast tier stays fast as tests are added. The call alone: the first
# test of each process also pays for the test database and imports in its setup.
UNMARKED_SLOW_S = 1.0
_TIER_MARKS = ("slow", "worker", "browser", "containers")
_unmarked_slow: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if (
        report.when == "call"
        and report.duration > UNMARKED_SLOW_S
        and not any(mark in report.keywords for mark in _TIER_MARKS)
    ):
        _unmarked_slow[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _unmarked_slow:
        return
    terminalreporter.section("tests to mark slow")
    terminalreporter.write_line(
        f"{len(_unmarked_slow)} test(s) without a tier mark took over {UNMARKED_SLOW_S:.0f} s"
        " (mark them @pytest.mark.slow so that `make test-fast` stays fast):"
    )
    for nodeid, seconds in sorted(_unmarked_slow.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"  {seconds:5.2f} s  {nodeid}")


FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "images"
REPO_ROOT = Path(__file__).resolve().parent.parent


def fixture_manifest() -> list[dict[str, str]]:
    with (IMAGES / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def upload_of(
    name: str, content: bytes | None = None, content_type: str = "image/jpeg"
) -> SimpleUploadedFile:
    data = (IMAGES / name).read_bytes() if content is None else content
    return SimpleUploadedFile(name, data, content_type=content_type)


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def ml_cli(*args: object) -> subprocess.CompletedProcess:
    """``python -m ml ARGS`` run in this process through ``ml.cli.main``: the same parser
    and commands, exit status, stdout and stderr, without a new interpreter importing
    TensorFlow again (~5 s each). ``tests/ml/test_train_cli.py`` runs the real
    ``python -m ml`` entry point in a subprocess once."""
    from ml.cli import main

    argv = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    code = 0 if code is None else code  # as sys.exit(main()) exits
    return subprocess.CompletedProcess(
        ["python", "-m", "ml", *argv], code, out.getvalue(), err.getvalue()
    )


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The larger shared data sets, found through CXR_SHARED_DATASETS (set by .ci/run)."""
    import os

    value = os.environ.get("CXR_SHARED_DATASETS")
    if not value or not Path(value).is_dir():
        pytest.skip("CXR_SHARED_DATASETS is not set to the shared datasets folder")
    return Path(value)


@pytest.fixture(scope="session")
def ct_tiny_model(request, tmp_path_factory) -> Path:
    """The tiny real CT model (ml.ct.tiny), trained on tests/fixtures/ct (~25 s) the first
    time and kept in pytest's cache folder (.pytest_cache/d/ct-tiny) for later runs, so
    `make test-fast` trains nothing once it has run: ``build_tiny_ct_model`` trains again
    when the fixtures, the code that builds the model or the Keras version change (the
    hash on its card). xdist workers share it through a file lock. One folder per
    TensorFlow thread setting: training on one thread (xdist workers, tests/settings.py)
    and on all cores gives different weights, and a test of a slice without lungs
    depends on them."""
    import fcntl
    import os

    from ml.ct.tiny import build_tiny_ct_model

    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "all")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = (
        cache.mkdir(f"ct-tiny-threads-{threads}")
        if cache is not None
        else (tmp_path_factory.getbasetemp().parent / f"ct-tiny-threads-{threads}")
    )
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return build_tiny_ct_model(root)


@pytest.fixture
def ct_production_model(db, ct_tiny_model):
    """The tiny CT model registered as the production CT segmenter (its own task: the
    classifier's production version is untouched)."""
    from apps.models.services import register_artifact

    return register_artifact(
        artifact_path=ct_tiny_model, make_production=True, task="ct_segmentation"
    )


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture
def production_model(db):
    from django.conf import settings as django_settings

    from apps.models.services import register_artifact

    return register_artifact(artifact_path=django_settings.CXR_BUNDLED_MODEL, make_production=True)


@pytest.fixture
def clinician(db):
    return UserFactory(username="dr-a", roles=["clinician"])


@pytest.fixture
def other_clinician(db):
    return UserFactory(username="dr-b", roles=["clinician"])


@pytest.fixture
def annotator(db):
    return UserFactory(username="annotator-a", roles=["annotator"])


@pytest.fixture
def model_admin(db):
    return UserFactory(username="admin-a", roles=["model_admin"])


@pytest.fixture
def login(client):
    def _login(user):
        client.force_login(user)
        return client

    return _login


@pytest.fixture(autouse=True)
def _empty_queues_for_process_tests(request):
    """A test that runs a real worker starts with this test process's queues empty: an
    earlier test may have left a job's message there (its rows rolled back), which the
    worker would take, and a test reading the worker's log would see a task it did not
    queue. Before the test's own body, so what the test queues itself is kept."""
    if not (
        request.node.get_closest_marker("worker") or request.node.get_closest_marker("browser")
    ):
        return
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        from cxrplatform.celery import app

        app.control.purge()
        return
    # The filesystem broker (a bare machine): this process's messages are files.
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in")
    if folder:
        for message in Path(str(folder)).glob("*.msg"):
            message.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """The log-in and token throttles count per client address in the cache, which
    outlives a test (and, with Redis, a test run): start every test at zero."""
    from apps.api.throttles import reset_throttles

    reset_throttles("127.0.0.1")


def clear_own_cache() -> None:
    """Empty this test process's cache entries only. ``cache.clear()`` on Django's
    RedisCache is FLUSHDB: on CI's Redis it also wiped the other xdist process's cache
    entries and the Celery queues that share the database (one process's test saw the
    other's cached summaries vanish mid-test)."""
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    cache = caches["default"]  # the backend itself (django.core.cache.cache is a proxy)
    if not isinstance(cache, RedisCache):
        cache.clear()
        return
    client = cache._cache.get_client(write=True)
    pattern = f"{cache.key_prefix}:*" if cache.key_prefix else "*"
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
