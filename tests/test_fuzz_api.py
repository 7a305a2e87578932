"""Fuzzing the HTTP API against its own OpenAPI description (``GET /openapi.json``) with
schemathesis: valid and invalid bodies, headers, methods and tokens. Never a 500, every status
and body as documented, every request outside the schema refused with a 4xx, auth enforced.

The server runs on its own thread as in production, with a fake controller handle
(tests/fakes.py) on a "main loop" thread of its own. Budget: ``HACONTROL_FUZZ_EXAMPLES``
(default 200: a tenth of it per operation and mode); docs/hardening.md shows how to run longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from hacontrol.api_schema import document
from tests.fakes import TOKEN, FakeHandle, threaded_api

EXAMPLES = max(10, int(os.environ.get("HACONTROL_FUZZ_EXAMPLES", "200")) // 10)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    # Rate limits out of the way: the fuzzer is one client sending thousands of requests.
    with threaded_api(FakeHandle(), rate_limit=100000.0, rate_burst=100000) as (_, _, url):
        yield url


# The description the server publishes (test_api checks that /openapi.json is this document).
SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


CASES = [
    (label, mode)
    for label, operation in sorted(OPERATIONS.items())
    for mode in GenerationMode
    # A GET takes no input: nothing to make invalid.
    if mode is GenerationMode.POSITIVE or operation.method.upper() == "POST"
]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{lb}-{m.value}" for lb, m in CASES])
def test_fuzz_api(api_url: str, label: str, mode: GenerationMode):
    operation = OPERATIONS[label]
    calls = 0

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(base_url=api_url, headers=AUTH)

    run()
    assert calls > 0
    print(f"{label} {mode.value}: {calls} requests")  # the closing count, with -s
