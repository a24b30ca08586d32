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
from tests.unit.batch_runs import Run, run_one, run_requests

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis (the dev extra)")


@pytest.fixture(scope="module")
def model(tiny_gguf):
    loaded = LlamaCppBackend().load(ModelSpec(path=str(tiny_gguf), format="gguf", n_ctx=512, n_gpu_layers=0,
                                              n_threads=1, n_slots=4))
    yield loaded
    loaded.close()


def request_for(structure: dict | None = None, *, seed: int = 0, logprobs: int | None = None,
                max_tokens: int = 200, temperature: float = 1.0) -> GenerationRequest:
    return GenerationRequest(prompt="Answer in JSON:", max_tokens=max_tokens, structure=structure,
                             logprobs=logprobs, sampling=SamplingParams(temperature=temperature, seed=seed))


def run_seeds(model, structure: dict | None, seeds, **options) -> list[Run]:
    """One request per seed, all decoded together (four at a time)."""
    return run_requests(model, [request_for(structure, seed=seed, **options) for seed in seeds])


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
    for seed, run in enumerate(run_seeds(model, grammar, range(24))):
        if run.finish_reason == "stop" and well_formed(run.text):
            stopped += 1
            value = json.loads(run.text)
            assert validator.is_valid(value), (seed, run.text)
            assert len(value["name"]) <= 8 and len(value.get("tags", [])) <= 3
    assert stopped >= 8, f"only {stopped} of 24 outputs finished well-formed"


def test_an_output_that_runs_out_of_tokens_is_still_a_prefix_the_grammar_allows(model):
    grammar = structure_for_response_format({"type": "json_schema", "json_schema": {"schema": PERSON}})
    for run in run_seeds(model, grammar, range(8), max_tokens=6):
        assert run.finish_reason in ("length", "stop")
        assert run.text.startswith("{"), run.text


@pytest.mark.slow
def test_every_output_of_a_real_model_that_stops_is_valid_for_the_schema(demo_gguf):
    demo = LlamaCppBackend().load(ModelSpec(path=str(demo_gguf), format="gguf", n_ctx=512, n_gpu_layers=0,
                                            n_slots=6))
    grammar = structure_for_response_format({"type": "json_schema", "json_schema": {"schema": PERSON}})
    validator = jsonschema_rs.Draft202012Validator(PERSON)
    try:
        runs = run_seeds(demo, grammar, range(6), max_tokens=60)
    finally:
        demo.close()
    stopped = [run.text for run in runs if run.finish_reason == "stop"]
    assert len(stopped) >= 3
    for text in stopped:
        assert validator.is_valid(json.loads(text)), text


def test_json_object_mode_gives_a_json_object(model):
    grammar = structure_for_response_format({"type": "json_object"})
    finished = [run.text for run in run_seeds(model, grammar, range(8)) if run.finish_reason == "stop"]
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
    for run in run_seeds(model, grammar, range(8)):
        if run.finish_reason == "stop" and well_formed(run.text):
            finished += 1
            calls = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", run.text, re.S)
            assert calls and all(validator.is_valid(json.loads(c)) for c in calls), run.text
            assert all(json.loads(c)["name"] == "get_weather" for c in calls)
    assert finished


def test_a_resumed_sequence_continues_its_grammar_from_the_output_already_sent(model):
    """A job taken over by another worker re-reads prompt + sent output; the grammar must be advanced through
    the sent part only, so the continuation still completes the same JSON value."""
    from inference.engine.batch import SlotWork

    grammar = structure_for_response_format({"type": "json_schema", "json_schema": {"schema": PERSON}})
    request = request_for(grammar, temperature=0, max_tokens=200)
    whole = run_one(model, request)
    assert whole.finish_reason == "stop"
    prompt = model.tokenize(model.render_prompt(request))
    sent = whole.ids[:5]
    history = prompt + sent
    sampler = model.sampler(request, history, len(prompt))
    model.kv_trim(0, 0)
    out = [model.decode([SlotWork(0, history, 0, True, sampler)])[0].token]
    while out[-1] not in model.eog_ids:
        out.append(model.decode([SlotWork(0, [out[-1]], len(history) + len(out) - 1, True, sampler)])[0].token)
    sampler.close()
    assert sent + out == whole.ids


def test_it_refuses_a_schema_it_cannot_turn_into_a_grammar():
    with pytest.raises(InvalidRequest, match=r"\$ref"):
        structure_for_response_format({"type": "json_schema",
                                       "json_schema": {"schema": {"$ref": "https://example.com/schema.json"}}})
    with pytest.raises(InvalidRequest, match="cannot be turned into a grammar"):
        compile_structure({"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}})
    with pytest.raises(InvalidRequest, match="not in tools"):
        tool_call_schema([{"type": "function", "function": {"name": "a"}}], {"function": {"name": "b"}})


def test_it_reports_the_sampled_tokens_log_probabilities_and_the_top_alternatives(model):
    never_end = {2: -100, 260: -100}  # the tiny vocabulary's </s> and <|im_end|>
    request = GenerationRequest(prompt="Answer in JSON:", max_tokens=12, logprobs=3,
                                sampling=SamplingParams(temperature=0, logit_bias=never_end))
    run = run_one(model, request)
    entries = run.logprobs
    assert len(entries) == 12
    assert "".join(entry["token"] for entry in entries) == run.text or not run.text.isascii()
    for entry in entries:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        alternatives = [alt["logprob"] for alt in entry["top_logprobs"]]
        assert alternatives == sorted(alternatives, reverse=True)
        assert sum(math.exp(lp) for lp in alternatives) <= 1 + 1e-6
        # Greedy: the sampled token is the most likely one.
        assert math.isclose(entry["logprob"], alternatives[0], abs_tol=1e-6)
        assert entry["token"] == entry["top_logprobs"][0]["token"]
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]


def test_log_probabilities_are_the_models_own_not_the_samplers(model):
    """A banned token keeps its log probability among the alternatives: they are read before the bias."""
    plain = run_one(model, request_for(temperature=0, max_tokens=1, logprobs=2))
    best = plain.ids[0]
    banned = GenerationRequest(prompt="Answer in JSON:", max_tokens=1, logprobs=2,
                               sampling=SamplingParams(temperature=0, logit_bias={best: -100}))
    run = run_one(model, banned)
    assert run.ids[0] != best
    assert run.logprobs[0]["top_logprobs"] == plain.logprobs[0]["top_logprobs"]


def test_zero_alternatives_gives_the_sampled_token_alone(model):
    run = run_one(model, request_for(temperature=0, max_tokens=4, logprobs=0))
    assert run.logprobs and all(entry["top_logprobs"] == [] for entry in run.logprobs)
    assert run_one(model, request_for(temperature=0, max_tokens=4)).logprobs == []


def test_logprobs_do_not_change_what_is_generated(model):
    plain = run_seeds(model, None, range(4), max_tokens=20)
    with_logprobs = run_seeds(model, None, range(4), max_tokens=20, logprobs=5)
    assert [r.ids for r in plain] == [r.ids for r in with_logprobs]
