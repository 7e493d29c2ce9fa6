"""Schemathesis fuzzes every operation of the live schema over real HTTP.

A live server (pytest-django, real database) serves ``/api/v1/schema/``;
schemathesis loads it from there and sends generated requests, valid and
invalid, authenticated with the token of a user holding every role, who owns
a predicted case with a real Grad-CAM and a segmented CT case, so that some ids
exist (the CT endpoints among them). Every response
must be a non-5xx that conforms to the schema (status code, content type,
headers, body).

``positive_data_acceptance`` is left out: a schema cannot say "bytes that
decode as a chest X-ray", "the right password" or "a version that can be
promoted", so schema-valid requests are rightly refused with 400, 409, 413,
415 or 429 (each documented, and checked for conformance like any response).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from knox.models import AuthToken
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from apps.explain.models import Explanation
from cxrplatform.jobs import run_job_now
from tests.api.conftest import predicted_case, segmented_ct_case
from tests.factories import UserFactory

pytestmark = pytest.mark.slow

ALL_ROLES = ["clinician", "annotator", "model_admin"]
MAX_EXAMPLES = 12


@pytest.fixture
def fuzz_tokens(transactional_db, production_model, ct_production_model):
    fuzzer = UserFactory(username="fuzzer", roles=ALL_ROLES)
    revoker = UserFactory(username="revoker", roles=ALL_ROLES)
    case = predicted_case(fuzzer)
    segmented_ct_case(fuzzer)
    explanation = Explanation.objects.get(image__case=case)
    run_job_now(Explanation, explanation.pk)
    token = AuthToken.objects.create(user=fuzzer)[1]

    def revocable() -> str:
        # DELETE /auth/token/ revokes the token it is sent with: give it its own.
        return AuthToken.objects.create(user=revoker)[1]

    return {"token": token, "revocable": revocable}


def _purge_queued_jobs() -> None:
    """Explanation requests the fuzzer made were queued on the test broker; drop them
    so a later test's worker does not pick them up."""
    from cxrplatform.celery import QUEUES, app

    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel  # kombu's typed StdChannel lacks both calls
        for queue in QUEUES:
            channel.queue_declare(queue=queue, passive=False, durable=True, auto_delete=False)
            channel.queue_purge(queue)


# Sequences restart at 1 on PostgreSQL too, so generated small ids hit the fixtures' rows.
@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_every_operation_of_the_live_schema_survives_fuzzing(live_server, fuzz_tokens):
    # schemathesis' lazy pytest integration (pytest.from_fixture) reads a pytest
    # attribute that pytest 9 removed, so the operations are driven through
    # Hypothesis directly with schemathesis' own strategies and checks.
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/schema/")
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    # Deleting the fuzzer's cases last: before, it would leave the other operations
    # nothing of theirs to work on.
    operations.sort(key=lambda op: op.label == "DELETE /api/v1/cases/{id}/")
    statuses: Counter[int] = Counter()
    cases = 0
    no_negative: list[str] = []
    try:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                )
                def check(case):
                    nonlocal cases
                    revoke = case.method.upper() == "DELETE" and case.path == "/api/v1/auth/token/"
                    token = fuzz_tokens["revocable"]() if revoke else fuzz_tokens["token"]
                    response = case.call_and_validate(
                        base_url=live_server.url,
                        headers={"Authorization": f"Token {token}"},
                        excluded_checks=[positive_data_acceptance],
                        timeout=30,
                    )
                    assert response.status_code < 500
                    statuses[response.status_code] += 1
                    cases += 1

                try:
                    check()
                except Unsatisfiable:
                    # Nothing to make invalid (e.g. no parameters and no body).
                    assert mode == GenerationMode.NEGATIVE, operation.label
                    no_negative.append(operation.label)
    finally:
        _purge_queued_jobs()
    elapsed = time.monotonic() - started
    print(  # the figures for the CI log
        f"\nschemathesis: {len(operations)} operations, {cases} cases in {elapsed:.0f} s; "
        f"statuses {dict(sorted(statuses.items()))}; no invalid input possible for {no_negative}"
    )
    labels = {op.label for op in operations}
    assert len(labels) == 51, sorted(labels)  # every endpoint and method but the docs
    assert {200, 202, 204, 400, 404, 409, 415} <= set(statuses)
