"""Schemathesis against Hearth's own OpenAPI schema (/api/openapi.json): a bounded number of generated requests,
valid and invalid, per operation. No 5xx, and every documented response matches its schema."""

from __future__ import annotations

import os
import secrets

import schemathesis
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

EXAMPLES = int(os.environ.get("HEARTH_FUZZ_EXAMPLES", "15"))


def test_it_survives_generated_requests_to_every_operation(embedded_server):
    username = f"fuzz-{secrets.token_hex(3)}"
    key = embedded_server.create_user(username)  # a member: the admin endpoints answer 403, nothing is revoked
    schema = schemathesis.openapi.from_url(f"{embedded_server.base_url}/api/openapi.json")
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /v1/models", "POST /v1/chat/completions",
                                                "POST /v1/completions", "POST /v1/embeddings"}
    def fuzz(strategy, label: str) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            response = case.call(base_url=embedded_server.base_url, timeout=120)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except AssertionError as error:
                failures.append(f"{label} {response.status_code}: {error}"[:1500])

        check()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {key}"})
            try:
                fuzz(strategy, f"{operation.label} [{mode.value}]")
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n\n".join(failures[:10])
    assert sum(statuses.values()) >= len(operations) * EXAMPLES, statuses  # it really sent them
    assert {400, 403}.issubset(statuses), statuses  # invalid bodies refused; admin endpoints refused to a member
    print("fuzzing statuses:", dict(sorted(statuses.items())))
