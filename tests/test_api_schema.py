"""schemathesis against the API's OpenAPI document: every operation, called over HTTP on
the running ``roast-jobs api`` with an admin's key and generated input (valid and
invalid), never answers 5xx, and every answer matches the document (status, content
type, body schema).

The document is taken from ``create_app`` at collection time (schemathesis makes one test
per operation then); the first test checks that the server serves that same document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from roast_jobs.api import create_app
from tests.api_support import auth, serve_api

# No connection is made to build the document: the URL is never used.
DOCUMENT = create_app("postgresql://unused@127.0.0.1:1/none").openapi()
# A schema-valid request may still be refused by a rule between fields or with the
# database (400: "give exactly one of...", an URL that is not http; 409; 503 paused):
# such refusals are 400, never 422, so a 422 for valid input still fails the check.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "503"]
            }
        }
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def api(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API as deployed: no private network allowed to imports, so generated URLs on
    this machine (its database, its other services) are refused before any fetch."""
    # Quotas high enough that the routes that charge them keep answering past their
    # first twenty calls (a 429 is documented, but would hide the rest of each route).
    limits = {f"ROAST_JOBS_QUOTA_{plan}_{window}": "1000000"
              for plan in ("REGULAR", "PRO") for window in ("HOUR", "MONTH")}  # fmt: skip
    with serve_api(app_db, tmp_path_factory.mktemp("api") / "log", limits) as base:
        yield base


def test_the_server_serves_this_document(api: str) -> None:
    assert httpx.get(f"{api}/openapi.json").json() == DOCUMENT
    assert len(DOCUMENT["paths"]) >= 20


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)  # fmt: skip
def test_every_operation_answers_within_its_schema(
    case: Any, api: str, people: dict[str, Any]
) -> None:
    # A case whose headers were made invalid on purpose (the key left out) goes without
    # the key: adding it back would undo the mutation the negative check then expects
    # refused.
    headers = {} if case.meta.is_negative_at(ParameterLocation.HEADER) else auth(people["admin"])
    if (case.method, case.path) != ("POST", "/api/import"):
        case.call_and_validate(base_url=api, headers=headers, timeout=60)
        return
    # The one deliberate 5xx: an import run in the request (flags on the legacy side) of
    # a well-formed URL that cannot be fetched is 502, the upstream's failure, not ours.
    answer = case.call_and_validate(
        base_url=api,
        headers=headers,
        timeout=60,
        excluded_checks=[not_a_server_error, positive_data_acceptance],
    )
    if answer.status_code >= 500:
        assert answer.status_code == 502 and answer.json()["error"].startswith("import failed")
    elif answer.status_code == 422 and case.meta.generation.mode.is_positive:
        assert answer.json()["error"].startswith("import failed")  # fetched, not an article
