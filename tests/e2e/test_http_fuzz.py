"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), against a real
``shelfsight serve``: no 5xx, no hang, and every response matches the schema (status code, content
type, body).

CI runs a few examples per operation. The longer run, before a release or after touching
``search/http.py``::

    SHELFSIGHT_FUZZ_EXAMPLES=500 .venv/bin/pytest -q tests/e2e/test_http_fuzz.py
"""

from __future__ import annotations

import os
import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from shelfsight.search.http import create_app
from shelfsight.search.settings import Settings

from tests.e2e.proctree import stopped_tree

EXAMPLES = int(os.environ.get("SHELFSIGHT_FUZZ_EXAMPLES", "12"))
# What the API promises: no 5xx; status, content type, headers and body as documented; input the
# schema forbids refused. (Schema-valid input may still be refused with a 400 naming the problem:
# filter syntax and image bytes are checked beyond what a schema can say.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Seconds one request may take before it counts as a hang (the tiny model answers in well under one).
HANG = 60


@pytest.fixture(scope="module")
def base_url(built_db, tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "db"
    shutil.copytree(built_db, db)
    with stopped_tree("serve", "--db", db) as (base, _):
        yield base


# The schema comes from the same app code the server runs (no store is opened to describe it), so
# the operations are known when pytest collects; every request goes to the real server above.
schema = schemathesis.openapi.from_dict(create_app(Settings(db="unused")).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, base_url):
    case.call_and_validate(base_url=base_url, timeout=HANG, checks=CHECKS)
