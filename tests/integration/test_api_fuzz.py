"""Schemathesis against Hearth's own OpenAPI schema (/api/openapi.json): a bounded number of generated requests,
valid and invalid, per operation. No 5xx, and every documented response matches its schema. A third pass puts a
NUL or a lone surrogate into one string of each generated request (a body string, or a URL parameter: NUL only,
as a URL cannot carry a lone surrogate): each gets a 400 invalid_text."""

from __future__ import annotations

import copy
import os
import secrets

import schemathesis
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

EXAMPLES = int(os.environ.get("HEARTH_FUZZ_EXAMPLES", "15"))
BAD_TEXT = ["\u0000", "\ud800", "\udfff", "\udc80\u0000"]  # NUL, lone high and low surrogates, both


def string_slots(value, slots: list) -> list:
    """(container, key) of every string in a JSON-like value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        if isinstance(child, str):
            slots.append((value, key))
        else:
            string_slots(child, slots)
    return slots


def with_bad_text(case, bad: str, pick: int):
    """The case with `bad` put into one of its strings: a body string, else a path or query parameter (NUL only).
    None when it has no string."""
    body = copy.deepcopy(case.body) if isinstance(case.body, dict | list) else case.body
    parameters = {"path_parameters": dict(case.path_parameters or {}), "query": dict(case.query or {})}
    slots = string_slots(body, []) if isinstance(body, dict | list) else []
    if not slots:
        bad = "\u0000"
        slots = [(values, key) for values in parameters.values() for key, value in values.items()
                 if isinstance(value, str)]
    if not slots:
        return None
    container, key = slots[pick % len(slots)]
    container[key] = container[key][:2] + bad + container[key][2:]
    # A new case: schemathesis would re-validate a changed one, and its validator cannot encode lone surrogates.
    return case.operation.Case(body=body, headers=case.headers, media_type=case.media_type, **parameters)


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


def names_the_bad_text(response) -> bool:
    """OpenAI's envelope carries the code invalid_text; the other dialects' shapes (Anthropic's {"type": "error",
    "error": {...}}, Ollama's {"error": "..."}) carry the same message."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    if isinstance(error, dict) and error.get("code") is not None:
        return error["code"] == "invalid_text"
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    return "NUL character" in message or "surrogate" in message


def test_it_refuses_nul_and_lone_surrogates_in_generated_requests_with_400(embedded_server):
    key = embedded_server.create_user(f"fuzz-{secrets.token_hex(3)}")
    schema = schemathesis.openapi.from_url(f"{embedded_server.base_url}/api/openapi.json")
    failures: list[str] = []
    refused = {"sent": 0}

    def fuzz(strategy, label: str) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy, bad=st.sampled_from(BAD_TEXT), pick=st.integers(min_value=0, max_value=1000))
        def check(case, bad, pick):
            case = with_bad_text(case, bad, pick)
            if case is None:
                return
            response = case.call(base_url=embedded_server.base_url, timeout=120)
            refused["sent"] += 1
            if response.status_code != 400 or not names_the_bad_text(response):
                failures.append(f"{label} {case.body!r:.300} {case.path_parameters} {case.query}: "
                                f"{response.status_code} {response.text[:300]}")

        check()

    for operation in (result.ok() for result in schema.get_all_operations()):
        fuzz(operation.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                   headers={"Authorization": f"Bearer {key}"}), operation.label)
    assert not failures, "\n\n".join(failures[:10])
    assert refused["sent"] >= 3 * EXAMPLES, refused  # chat, completions and embeddings at least
