"""Tool calls end to end on a real embedded server with tiny real models (llama.cpp, grammar-constrained calls).

- A forced call (tool_choice "required" or a named function) is one call (several only with
  parallel_tool_calls), finish_reason "tool_calls", and decoding ends right after it, not at max_tokens.
- Streamed calls arrive as OpenAI's incremental `tool_calls` deltas; the official client's accumulation of them
  equals the non-streamed answer, ids included, and a resumed stream renders the same chunks.
- Tools reach the model through its own chat template when the template reads `tools`; otherwise Hearth's
  built-in tools prompt describes them.

The tiny models write gibberish, so their calls come from the grammar of a forced call; the tools prompt needs
more room than the session's "tiny" model has, so this module imports two tiny models with 4096 tokens of context.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.schemas.openai import ChatCompletionRequest
from inference.engine.base import ModelSpec
from inference.engine.llamacpp import LlamaCppBackend
from tests.conftest import openai_client
from tests.factories import CHATML, build_tiny_gguf
from tests.integration.sse_client import events

# A Qwen-like template that reads `tools` (and writes earlier calls and results itself).
TOOLS_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n# Tools\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' ~ tool | tojson }}
    {%- endfor %}
    {{- '\n</tools><|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls is defined %}
        {{- '<|im_start|>assistant' }}
        {%- for call in message.tool_calls %}
            {{- '\n<tool_call>\n{"name": "' ~ call.function.name ~ '", "arguments": ' ~ call.function.arguments | tojson ~ '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' ~ message.content ~ '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' ~ message.content ~ '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501

BUILT_IN_PROMPT = "You may call one or more functions to assist with the user query."
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}]
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "user", "content": "Weather in Oslo?"}]
HISTORY = [
    *USER,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 4}'},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
TEMPLATE_MODEL, CHATML_MODEL = "tools-template", "tools-chatml"


@pytest.fixture(scope="module")
def tool_models(embedded_server, tmp_path_factory):
    """{name: (path, template)}: a tiny GGUF whose chat template reads `tools`, and one whose template does not,
    both with room for the tools (4096 tokens), imported into the running server."""
    directory = tmp_path_factory.mktemp("tool-models")
    models = {TEMPLATE_MODEL: TOOLS_TEMPLATE, CHATML_MODEL: CHATML}
    paths = {}
    for name, template in models.items():
        paths[name] = build_tiny_gguf(directory / f"{name}.gguf", chat_template=template, context_length=4096)
        embedded_server.manage("import_model", str(paths[name]), "--name", name)
    return {name: (paths[name], template) for name, template in models.items()}


@pytest.fixture(scope="module")
def loaded(tool_models):
    """The same models loaded here (llama.cpp, as the worker loads them), to see the prompts they render."""
    models = {name: LlamaCppBackend().load(ModelSpec(path=str(path), format="gguf", n_ctx=4096, n_gpu_layers=0,
                                                     n_threads=1, chat_template=template))
              for name, (path, template) in tool_models.items()}
    yield models
    for model in models.values():
        model.close()


def engine_request(**fields):
    return ChatCompletionRequest.model_validate({"model": "any", "messages": USER, **fields}).to_generation_request()


def chat(server, model: str = TEMPLATE_MODEL, **fields):
    fields = {"messages": USER, "tools": WEATHER, **fields}
    return openai_client(server).chat.completions.create(model=model, **fields)


def auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def as_dicts(tool_calls) -> list[dict]:
    return [{"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in tool_calls or ()]


# --- the prompt: the model's own template, or the built-in tools prompt ------------------------------------


def test_a_template_that_reads_tools_gets_them_itself(loaded):
    prompt = loaded[TEMPLATE_MODEL].render_prompt(engine_request(messages=HISTORY, tools=WEATHER))

    assert "# Tools\n<tools>\n" + json.dumps(WEATHER[0], ensure_ascii=False) in prompt
    assert BUILT_IN_PROMPT not in prompt
    # earlier calls and results as the template writes them (their arguments as objects)
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt
    assert '<|im_start|>user\n<tool_response>\n{"celsius": 4}\n</tool_response>' in prompt


def test_a_template_without_tools_gets_the_built_in_tools_prompt(loaded):
    prompt = loaded[CHATML_MODEL].render_prompt(engine_request(messages=HISTORY, tools=WEATHER))

    assert prompt.startswith(f"<|im_start|>system\n{BUILT_IN_PROMPT}")
    assert json.dumps(WEATHER[0], ensure_ascii=False) in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' \
        in prompt
    assert '<|im_start|>user\n<tool_response>\n{"celsius": 4}\n</tool_response>' in prompt


def test_without_tools_or_with_tool_choice_none_neither_template_hears_of_them(loaded):
    for model in loaded.values():
        for request in (engine_request(), engine_request(tools=WEATHER, tool_choice="none")):
            prompt = model.render_prompt(request)
            assert "get_weather" not in prompt and BUILT_IN_PROMPT not in prompt


@pytest.mark.parametrize("model", [TEMPLATE_MODEL, CHATML_MODEL])
def test_the_worker_renders_the_same_prompt(embedded_server, loaded, model):
    """The job carries the tools to the worker: its prompt has exactly the tokens of the prompt rendered here."""
    expected = len(loaded[model].tokenize(loaded[model].render_prompt(engine_request(messages=HISTORY,
                                                                                     tools=WEATHER))))
    completion = openai_client(embedded_server).chat.completions.create(
        model=model, messages=HISTORY, tools=WEATHER, max_tokens=1)
    assert completion.usage.prompt_tokens == expected


# --- forced calls: exactly one, and decoding ends after it ---------------------------------------------------


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
def test_a_forced_call_is_one_call_and_decoding_ends_right_after_it(embedded_server, tool_models, tool_choice):
    for seed in range(4):
        completion = chat(embedded_server, tools=[*WEATHER, TIME] if tool_choice == "required" else WEATHER,
                          tool_choice=tool_choice, max_tokens=400, seed=seed)
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        if call.function.name == "get_weather":
            assert set(json.loads(call.function.arguments)) == {"city"}
        else:
            assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}
        # the grammar ended at the close tag: the end-of-generation token came long before max_tokens
        assert completion.usage.completion_tokens < 120, completion.usage


def test_parallel_calls_keep_every_complete_call_when_the_last_is_cut_off(embedded_server, tool_models):
    seen_calls = 0
    for seed in range(6):
        choice = chat(embedded_server, tool_choice=NAMED, parallel_tool_calls=True, max_tokens=200,
                      seed=seed).choices[0]
        calls = choice.message.tool_calls or []
        seen_calls += len(calls)
        for call in calls:
            assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
        if calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
        else:  # cut off within its first call: what the model wrote is the content
            assert choice.finish_reason == "length" and choice.message.content.startswith("<tool_call>")
    assert seen_calls >= 8  # a call is about 95 tokens: some replies had two, and some a third cut off


def test_auto_answers_in_text_or_calls(embedded_server, tool_models):
    for seed in range(3):
        choice = chat(embedded_server, tool_choice="auto", max_tokens=8, seed=seed).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content is not None


# --- streamed calls ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"tool_choice": "required", "seed": 1},
    {"tool_choice": NAMED, "parallel_tool_calls": True, "seed": 1},
    {"tool_choice": "required", "seed": 5, "n": 2},
])
def test_the_clients_accumulated_stream_equals_the_whole_answer(embedded_server, tool_models, fields):
    client = openai_client(embedded_server)
    fields = {"max_tokens": 400, **fields}
    with client.chat.completions.stream(model=TEMPLATE_MODEL, messages=USER, tools=WEATHER, **fields) as stream:
        for _event in stream:
            pass
        streamed = stream.get_final_completion()
    whole = httpx.get(f"{embedded_server.base_url}/v1/chat/completions/{streamed.id}", headers=auth(embedded_server),
                      timeout=60).json()
    again = chat(embedded_server, stream=False, **fields)  # the same seed: the same text, other ids
    assert len(streamed.choices) == len(whole["choices"]) == fields.get("n", 1)
    assert any(choice.message.tool_calls for choice in streamed.choices)
    for choice, whole_choice, other in zip(streamed.choices, whole["choices"], again.choices, strict=True):
        assert as_dicts(choice.message.tool_calls) == whole_choice["message"].get("tool_calls", [])
        assert choice.message.content == whole_choice["message"]["content"]
        assert choice.finish_reason == whole_choice["finish_reason"] == other.finish_reason
        assert ([(c["function"]["name"], c["function"]["arguments"]) for c in as_dicts(choice.message.tool_calls)]
                == [(c["function"]["name"], c["function"]["arguments"]) for c in as_dicts(other.message.tool_calls)])


def test_a_streamed_call_comes_as_incremental_deltas(embedded_server, tool_models):
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/chat/completions", headers=auth(embedded_server),
                      timeout=120, json={"model": TEMPLATE_MODEL, "messages": USER, "tools": WEATHER, "seed": 2,
                                         "tool_choice": "required", "max_tokens": 400, "stream": True}) as response:
        received = [e.data for e in events(response) if isinstance(e.data, dict)]
    deltas = [tc for chunk in received for choice in chunk["choices"] for tc in choice["delta"].get("tool_calls", [])]
    first, rest = deltas[0], deltas[1:]
    assert first == {"index": 0, "id": first["id"], "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}
    assert len(rest) > 3 and all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
                                 for d in rest)
    assert set(json.loads("".join(d["function"]["arguments"] for d in rest))) == {"city"}
    assert [c["choices"][0]["finish_reason"] for c in received if c["choices"][0]["finish_reason"]] == ["tool_calls"]


def test_a_resumed_tool_call_stream_renders_the_same_chunks(embedded_server, tool_models):
    body = {"model": TEMPLATE_MODEL, "messages": USER, "tools": WEATHER, "tool_choice": "required", "seed": 4,
            "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/chat/completions", headers=auth(embedded_server),
                      timeout=120, json=body) as response:
        first = list(events(response))
    completion_id = first[0].data["id"]
    url = f"{embedded_server.base_url}/v1/chat/completions/{completion_id}"
    middle = len(first) // 2
    with httpx.stream("GET", url, params={"stream": "true"}, timeout=60,
                      headers={**auth(embedded_server), "Last-Event-ID": first[middle].id}) as response:
        rest = list(events(response))
    assert [(e.id, e.data) for e in rest] == [(e.id, e.data) for e in first[middle + 1:]]


# --- bad input -----------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)
FUNCTIONS = st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "", "x y"]) | JSON_VALUES},
                                  optional={"parameters": JSON_VALUES | st.just({"type": "object"}),
                                            "description": JSON_VALUES})
TOOLS = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "custom"]) | JSON_VALUES},
                                       optional={"function": FUNCTIONS | JSON_VALUES}) | JSON_VALUES, max_size=2)
TOOL_CHOICES = st.sampled_from(["auto", "none", "required", "any", NAMED]) | JSON_VALUES
CALLS = st.lists(st.fixed_dictionaries({}, optional={"id": JSON_VALUES, "type": JSON_VALUES,
                                                     "function": st.fixed_dictionaries(
                                                         {}, optional={"name": JSON_VALUES,
                                                                       "arguments": JSON_VALUES})}) | JSON_VALUES,
                 max_size=2)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(tools=TOOLS | JSON_VALUES, tool_choice=TOOL_CHOICES, parallel=JSON_VALUES, calls=CALLS | JSON_VALUES,
       stream=st.booleans())
def test_malformed_tools_and_calls_get_a_4xx_never_a_5xx(embedded_server, tool_models, tools, tool_choice,
                                                        parallel, calls, stream):
    body = {"model": TEMPLATE_MODEL, "max_tokens": 2, "tools": tools, "tool_choice": tool_choice,
            "parallel_tool_calls": parallel, "stream": stream,
            "messages": [*USER, {"role": "assistant", "tool_calls": calls}, {"role": "tool", "content": "4",
                                                                            "tool_call_id": "call_1"}]}
    response = httpx.post(f"{embedded_server.base_url}/v1/chat/completions", json=body, timeout=120,
                          headers=auth(embedded_server))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
