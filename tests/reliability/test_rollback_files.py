"""A database rollback leaves no orphan files: uploads, heatmaps and model artifacts.

The database error is a real one: a trigger in the test database refuses the
write (SQLite ``RAISE(ABORT)``, PostgreSQL ``RAISE EXCEPTION``), after the
files were already written to storage. Storage is not transactional, so the
code must delete them itself (``cxrplatform.files.files_removed_on_error``).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.db import DatabaseError, connection

from apps.cases import services
from apps.cases.models import Case, CaseImage, Prediction
from apps.explain.models import Explanation
from apps.models.models import ModelVersion
from apps.models.services import register_artifact
from cxrplatform.jobs import run_job_now
from tests.conftest import stored_files, upload_of

pytestmark = pytest.mark.django_db


@contextmanager
def database_refuses(table: str, event: str, when: str = "TRUE"):
    """A trigger that makes ``event`` (INSERT or UPDATE) on ``table`` fail when ``when`` holds."""
    name = f"refuse_{table}_{event.lower()}"
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
            )
        else:
            cursor.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by the test trigger'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW "
                f"WHEN ({when}) EXECUTE FUNCTION {name}()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER {name}")
            else:
                cursor.execute(f"DROP TRIGGER {name} ON {table}")
                cursor.execute(f"DROP FUNCTION {name}()")


def test_upload_whose_prediction_row_is_refused_leaves_no_file(clinician, media_root):
    with (
        database_refuses(Prediction._meta.db_table, "INSERT"),
        pytest.raises(DatabaseError, match="refused by the test trigger"),
    ):
        services.create_case(
            owner=clinician, files=[upload_of("2168a917.jpg"), upload_of("5f619d7e.jpg")]
        )
    assert Case.objects.count() == CaseImage.objects.count() == 0
    assert stored_files(media_root) == []


# Autocommit, as in a worker: the failed update does not poison a test transaction.
@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_explanation_whose_result_row_is_refused_leaves_no_heatmap(
    clinician, production_model, media_root
):
    case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    run_job_now(Prediction, Prediction.objects.get(image__case=case).pk)
    explanation = Explanation.objects.get(image__case=case)
    before = set(stored_files(media_root))

    table = Explanation._meta.db_table
    when = "NEW.status = 'done'"
    with database_refuses(table, "UPDATE", when), pytest.raises(DatabaseError):
        run_job_now(Explanation, explanation.pk)
    # The heatmap and the overlay were written, then removed with the failed update.
    assert set(stored_files(media_root)) == before
    assert not [p for p in stored_files(media_root) if "explanations" in p.parts]
    explanation.refresh_from_db()
    assert explanation.status == "running"  # the task retries it, or the sweeper fails it
    assert not explanation.heatmap


def test_model_artifact_whose_registry_row_is_refused_leaves_no_file(media_root):
    with (
        database_refuses(ModelVersion._meta.db_table, "INSERT"),
        pytest.raises(DatabaseError),
    ):
        register_artifact(artifact_path=django_settings.CXR_BUNDLED_MODEL)
    assert ModelVersion.objects.count() == 0
    assert stored_files(media_root) == []
