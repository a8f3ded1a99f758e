"""schemathesis against the API's OpenAPI document: every operation, called over HTTP on
the running ``roast-jobs api`` with an admin's key and generated input (valid and
invalid), never answers 5xx, and every answer matches the document (status, content
type, body schema).

The document is taken from ``create_app`` at collection time (schemathesis makes one test
per operation then); the first test checks that the server serves that same document.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings

from roast_jobs.api import create_app
from tests.api_support import auth

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
    case.call_and_validate(base_url=api, headers=auth(people["admin"]), timeout=60)
