"""Grammar-constrained decoding and log probabilities in the llama.cpp backend, on a tiny real GGUF.

The engine request carries `structure` (what the output must be, as data; the backend compiles it into a grammar)
and `logprobs`; the OpenAI layer fills them from `response_format`, `tools` and `logprobs`/`top_logprobs`."""

from __future__ import annotations

import json
import math
import re
import pytest

from inference.engine.base import GenerationRequest, InvalidRequest, ModelSpec
from inference.engine.grammar import (
    compile_structure,
    structure_for_response_format,
    structure_for_tools,
    tool_call_schema,
)
from inference.engine.llamacpp import LlamaCppBackend
from inference.engine.sampling import SamplingParams

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis (the dev extra)")


@pytest.fixture(scope="module")
def model(tiny_gguf):
    loaded = LlamaCppBackend().load(ModelSpec(path=str(tiny_gguf), format="gguf", n_ctx=512, n_gpu_layers=0,
                                              n_threads=1))
    yield loaded
    loaded.close()


def run(model, structure: dict | None = None, *, seed: int = 0, logprobs: int | None = None, max_tokens: int = 200,
        temperature: float = 1.0):
    request = GenerationRequest(prompt="Answer in JSON:", max_tokens=max_tokens, structure=structure,
                                logprobs=logprobs, sampling=SamplingParams(temperature=temperature, seed=seed))
    events = list(model.generate(request))
    text = "".join(e.text for e in events if e.kind == "token")
    return text, events[-1].finish_reason, events


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "role": {"enum": ["admin", "member", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "age": {"type": "integer"},
    },
    "required": ["name", "role"],
    "additionalProperties": False,
}


def well_formed(text: str) -> bool:
    """The tiny model's random weights emit raw byte tokens that can form invalid UTF-8; llama.cpp's grammar
    counts such a sequence as one code point where Python shows several U+FFFD. Real models write valid UTF-8
    (see the demo-model test below); these outputs are left out of the length checks."""
    return "\ufffd" not in text


def test_every_output_that_stops_is_valid_for_the_schema(model):
    grammar = structure_for_response_format({"type": "json_schema", "json_schema": {"schema": PERSON}})
    validator = jsonschema_rs.Draft202012Validator(PERSON)
    stopped = 0
    for seed in range(24):
        text, finish, _ = run(model, grammar, seed=seed)
        if finish == "stop" and well_formed(text):
            stopped += 1
            value = json.loads(text)
            assert validator.is_valid(value), (seed, text)
            assert len(value["name"]) <= 8 and len(value.get("tags", [])) <= 3
    assert stopped >= 8, f"only {stopped} of 24 outputs finished well-formed"


@pytest.mark.slow
def test_every_output_of_a_real_model_that_stops_is_valid_for_the_schema(demo_gguf):
    demo = LlamaCppBackend().load(ModelSpec(path=str(demo_gguf), format="gguf", n_ctx=512, n_gpu_layers=0))
    grammar = structure_for_response_format({"type": "json_schema", "json_schema": {"schema": PERSON}})
    validator = jsonschema_rs.Draft202012Validator(PERSON)
    try:
        outputs = [run(demo, grammar, seed=seed, max_tokens=60) for seed in range(6)]
    finally:
        demo.close()
    stopped = [text for text, finish, _ in outputs if finish == "stop"]
    assert len(stopped) >= 3
    for text in stopped:
        assert validator.is_valid(json.loads(text)), text


def test_json_object_mode_gives_a_json_object(model):
    grammar = structure_for_response_format({"type": "json_object"})
    results = [run(model, grammar, seed=seed) for seed in range(8)]
    finished = [text for text, finish, _ in results if finish == "stop"]
    assert finished
    assert all(isinstance(json.loads(text), dict) for text in finished)


def test_a_required_tool_call_is_a_valid_call_of_the_named_function(model):
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    named = {"type": "function", "function": {"name": "get_weather"}}
    grammar = structure_for_tools(tools, named, parallel=True)
    validator = jsonschema_rs.Draft202012Validator(tool_call_schema(tools, named))
    finished = 0
    for seed in range(8):
        text, finish, _ = run(model, grammar, seed=seed)
        if finish == "stop" and well_formed(text):
            finished += 1
            calls = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)
            assert calls and all(validator.is_valid(json.loads(c)) for c in calls), text
            assert all(json.loads(c)["name"] == "get_weather" for c in calls)
    assert finished


def test_it_refuses_a_schema_it_cannot_turn_into_a_grammar():
    with pytest.raises(InvalidRequest, match=r"\$ref"):
        structure_for_response_format({"type": "json_schema",
                                       "json_schema": {"schema": {"$ref": "https://example.com/schema.json"}}})
    with pytest.raises(InvalidRequest, match="cannot be turned into a grammar"):
        compile_structure({"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}})
    with pytest.raises(InvalidRequest, match="not in tools"):
        tool_call_schema([{"type": "function", "function": {"name": "a"}}], {"function": {"name": "b"}})


def test_it_reports_the_sampled_tokens_log_probabilities_and_the_top_alternatives(model):
    text, _, events = run(model, seed=3, logprobs=3, max_tokens=12, temperature=0)
    entries = [entry for e in events if e.kind == "token" for entry in e.logprobs]
    assert len(entries) == 12
    assert "".join(entry["token"] for entry in entries) == text or not text.isascii()
    for entry in entries:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        alternatives = [alt["logprob"] for alt in entry["top_logprobs"]]
        assert alternatives == sorted(alternatives, reverse=True)
        assert sum(math.exp(lp) for lp in alternatives) <= 1 + 1e-6
        # Greedy: the sampled token is the most likely one.
        assert math.isclose(entry["logprob"], alternatives[0], abs_tol=1e-6)
        assert entry["token"] == entry["top_logprobs"][0]["token"]
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]


def test_logprobs_do_not_change_what_is_generated(model):
    plain, _, _ = run(model, seed=5, max_tokens=20)
    with_logprobs, _, _ = run(model, seed=5, max_tokens=20, logprobs=5)
    assert plain == with_logprobs
