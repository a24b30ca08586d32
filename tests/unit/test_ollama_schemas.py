"""Ollama's requests as Hearth reads them (api/schemas/ollama.py): options mapped onto OpenAI's sampling fields,
refusals by Ollama's names, keep_alive, and the responses built from a reply (tool calls as objects)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from api.schemas import ollama as ol
from api.schemas.openai import ChatCompletionRequest, CompletionRequest
from api.streaming import Answer

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def chat(**fields) -> ol.ChatRequest:
    return ol.ChatRequest.model_validate({"model": "tiny", "messages": HELLO, **fields})


def generate(**fields) -> ol.GenerateRequest:
    return ol.GenerateRequest.model_validate({"model": "tiny", "prompt": "Why is the sky blue?", **fields})


def refused(build) -> ol.RequestRefused:
    with pytest.raises(ol.RequestRefused) as caught:
        build()
    return caught.value


def invalid(request_class, body: dict) -> dict:
    with pytest.raises(ValidationError) as caught:
        request_class.model_validate(body)
    return caught.value.errors()[0]


# --- options -> sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "expected"), [
    ({}, {}),
    ({"temperature": 0.2}, {"temperature": 0.2}),
    ({"top_p": 0.9, "top_k": 40, "min_p": 0.05}, {"top_p": 0.9, "top_k": 40, "min_p": 0.05}),
    ({"seed": 42}, {"seed": 42}),
    ({"seed": -1}, {}),  # Ollama's "random"
    ({"num_predict": 100}, {"max_tokens": 100}),
    ({"num_predict": -1}, {"max_tokens": None}),  # no limit: until the context is full
    ({"num_predict": -2}, {"max_tokens": None}),
    ({"stop": ["\n", "user:"]}, {"stop": ["\n", "user:"]}),
    ({"stop": "END"}, {"stop": ["END"]}),
    ({"repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.3},
     {"repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.3}),
    # what only tunes Ollama's runner, or is at its "off" value, is accepted and changes nothing
    ({"num_ctx": 8192, "num_gpu": 99, "num_thread": 8, "num_batch": 512, "use_mmap": True, "num_keep": 5,
      "penalize_newline": True, "low_vram": False}, {}),
    ({"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0, "repeat_last_n": 64}, {}),
    ({"some_future_option": 3}, {}),
])
def test_it_maps_options_onto_openai_sampling_fields(options, expected):
    fields = chat(options=options).openai_fields("tiny")
    assert {key: fields[key] for key in fields if key not in ("model", "stream", "messages")} == expected


def test_the_mapped_options_reach_the_engine_request():
    request = chat(options={"temperature": 0.3, "top_k": 20, "top_p": 0.8, "min_p": 0.1, "seed": 9,
                            "num_predict": 7, "stop": ["x"], "repeat_penalty": 1.2}).to_openai("tiny")
    engine = request.to_generation_request()
    assert (engine.sampling.temperature, engine.sampling.top_k, engine.sampling.top_p, engine.sampling.min_p,
            engine.sampling.seed, engine.sampling.repeat_penalty) == (0.3, 20, 0.8, 0.1, 9, 1.2)
    assert engine.max_tokens == 7 and engine.stop == ("x",)
    assert engine.messages == [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(("options", "param"), [
    ({"mirostat": 2}, "mirostat"),
    ({"typical_p": 0.7}, "typical_p"),
    ({"tfs_z": 0.5}, "tfs_z"),
    ({"repeat_last_n": 128}, "repeat_last_n"),
    ({"num_predict": 0}, "num_predict"),
    ({"num_predict": -3}, "num_predict"),
    ({"temperature": "warm"}, "temperature"),
])
def test_it_refuses_options_it_cannot_honour_by_name(options, param):
    error = invalid(ol.ChatRequest, {"model": "tiny", "messages": HELLO, "options": options})
    assert tuple(error["loc"])[:2] == ("options", param)


@pytest.mark.parametrize(("options", "param"), [
    ({"temperature": 5}, "options.temperature"),
    ({"top_p": 0}, "options.top_p"),
    ({"presence_penalty": 3}, "options.presence_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "options.stop"),
    ({"seed": 2**64}, "options.seed"),
])
def test_openai_range_errors_name_the_ollama_option(options, param):
    error = refused(lambda: chat(options=options).to_openai("tiny"))
    assert error.param == param and f"'{param}'" in error.message


# --- requests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("300ms", 0.3), ("1.5h", 5400.0), (-1, -1.0), ("-1", -1.0), ("-5m", -1.0), (2.5, 2.5),
])
def test_it_reads_keep_alive_as_ollama_does(value, seconds):
    assert ol.keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "5mm", "m", "", True, [1], {"m": 5}])
def test_it_refuses_a_keep_alive_that_is_no_duration(value):
    error = invalid(ol.ChatRequest, {"model": "tiny", "keep_alive": value})
    assert tuple(error["loc"]) == ("keep_alive",)


def test_an_empty_chat_loads_and_with_keep_alive_zero_unloads():
    assert ol.ChatRequest.model_validate({"model": "tiny"}).is_empty
    assert ol.ChatRequest.model_validate({"model": "tiny", "messages": []}).is_empty
    assert not chat().is_empty and not chat().unloads
    assert ol.ChatRequest.model_validate({"model": "tiny", "messages": [], "keep_alive": 0}).unloads
    assert ol.GenerateRequest.model_validate({"model": "tiny", "prompt": "", "keep_alive": "0s"}).unloads
    assert not ol.GenerateRequest.model_validate({"model": "tiny", "keep_alive": "5m"}).unloads


def test_streaming_is_the_default():
    assert chat().streams and chat(stream=None).streams and not chat(stream=False).streams


@pytest.mark.parametrize(("format", "response_format"), [
    ("", None),
    ("json", {"type": "json_object"}),
    ({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]},
     {"type": "json_schema", "json_schema": {"name": "ollama_format", "schema": {
         "type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}}),
])
def test_format_becomes_a_response_format(format, response_format):
    fields = chat(format=format).openai_fields("tiny")
    assert fields.get("response_format") == response_format
    request = chat(format=format).to_openai("tiny")
    assert (request.to_generation_request().structure is None) == (response_format is None)


def test_it_refuses_a_format_that_is_neither_json_nor_a_schema():
    error = invalid(ol.ChatRequest, {"model": "tiny", "messages": HELLO, "format": "yaml"})
    assert error["loc"][0] == "format"


def test_chat_messages_become_openai_messages_with_tool_calls_as_json_text():
    request = chat(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "12 degrees", "tool_name": "get_weather"},
        {"role": "assistant", "content": "It is 12 degrees.", "thinking": "dropped"},
    ], tools=WEATHER)
    body = request.to_openai("tiny")
    assert isinstance(body, ChatCompletionRequest) and body.tools == WEATHER and body.uses_tools()
    call = body.messages[2].tool_calls[0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body.messages[3].role == "tool" and body.messages[3].name == "get_weather"
    assert body.messages[4].content == "It is 12 degrees."
    engine = body.to_generation_request().messages
    assert engine[2]["tool_calls"][0]["function"]["name"] == "get_weather" and engine[3]["name"] == "get_weather"


def test_a_generate_prompt_is_the_user_turn_and_system_the_system_turn():
    body = generate(system="Answer in French.").to_openai("tiny")
    assert isinstance(body, ChatCompletionRequest)
    assert [(m.role, m.content) for m in body.messages] == [("system", "Answer in French."),
                                                            ("user", "Why is the sky blue?")]


def test_raw_generate_is_a_text_completion_without_the_16_token_default():
    body = generate(raw=True, options={"temperature": 0}).to_openai("tiny")
    assert isinstance(body, CompletionRequest)
    assert body.prompt == ["Why is the sky blue?"] and body.max_tokens is None and body.temperature == 0
    assert generate(raw=True, options={"num_predict": 5}).to_openai("tiny").max_tokens == 5


def test_the_official_client_s_empty_strings_are_no_refusal():
    """ollama-python sends suffix, system and template as "" when they are not given."""
    body = generate(suffix="", system="", template="").to_openai("tiny")
    assert [m.role for m in body.messages] == ["user"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"suffix": "    return result"}, "suffix"),
    ({"template": "{{ .Prompt }}"}, "template"),
    ({"context": [1, 2, 3]}, "context"),
    ({"images": ["iVBORw0KGgo="]}, "images"),
    ({"think": True}, "think"),
    ({"think": "high"}, "think"),
])
def test_generate_refuses_what_hearth_cannot_do_by_name(fields, param):
    error = invalid(ol.GenerateRequest, {"model": "tiny", "prompt": "hi", **fields})
    assert error["loc"][0] == param and error["type"] == "unsupported_parameter"


def test_chat_refuses_images_in_a_message():
    error = invalid(ol.ChatRequest, {"model": "tiny", "messages": [
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}]})
    assert tuple(error["loc"]) == ("messages", 0, "images")


@pytest.mark.parametrize(("fields", "param"), [
    ({"raw": True, "system": "be brief"}, "system"),
    ({"raw": True, "format": "json"}, "format"),
])
def test_raw_refuses_what_needs_the_chat_template(fields, param):
    assert refused(lambda: generate(**fields).to_openai("tiny")).param == param


def test_embed_inputs():
    assert ol.EmbedRequest.model_validate({"model": "m", "input": "one"}).inputs == ["one"]
    assert ol.EmbedRequest.model_validate({"model": "m", "input": ["a", "b"]}).inputs == ["a", "b"]
    assert ol.EmbedRequest.model_validate({"model": "m", "input": ""}).inputs == []
    assert ol.EmbedRequest.model_validate({"model": "m"}).inputs == []
    assert ol.EmbeddingsRequest.model_validate({"model": "m", "prompt": "x"}).to_openai("m").input == ["x"]
    empty = refused(lambda: ol.EmbedRequest.model_validate({"model": "m", "input": ["a", ""]}).to_openai("m"))
    assert empty.param == "input" and "input[1] is empty" in empty.message


# --- responses ---------------------------------------------------------------------------------------------


def test_a_tool_call_in_the_reply_comes_back_with_arguments_as_an_object():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    message = ol.assistant_message(text, WEATHER)
    assert message == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]}


@pytest.mark.parametrize("text", [
    '{"name": "get_time", "arguments": {}}',  # not one of the request's tools
    '{"city": "Paris"}',  # an ordinary JSON answer
    "It is sunny.",
])
def test_a_reply_without_a_call_of_the_tools_is_content(text):
    assert ol.assistant_message(text, WEATHER) == {"role": "assistant", "content": text}


def test_without_tools_the_reply_is_the_content_as_it_is():
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    assert ol.assistant_message(text) == {"role": "assistant", "content": text}


def run_renderer(texts: list[str], *, tools=None, finish_reason="stop") -> list[dict]:
    from api.routers.ollama import _renderer

    render, answer, out = _renderer("chat", "tiny", 0.0, tools, False), Answer(), []
    events = [{"kind": "started", "prompt_tokens": 5}, *({"kind": "token", "text": t} for t in texts),
              {"kind": "done", "finish_reason": finish_reason, "prompt_tokens": 5, "completion_tokens": len(texts),
               "time_to_first_token": 0.5, "tokens_per_second": 10.0}]
    for index, event in enumerate(events, 1):
        answer.apply(event)
        out.extend(render(index, event, answer))
    return out


def test_a_stream_carries_the_text_then_one_object_with_the_statistics():
    chunks = run_renderer(["Hel", "lo", "!"], finish_reason="length")
    assert [c["message"]["content"] for c in chunks[:-1]] == ["Hel", "lo", "!"]
    assert not any(c["done"] for c in chunks[:-1])
    last = chunks[-1]
    assert last["done"] and last["done_reason"] == "length" and last["message"] == {"role": "assistant",
                                                                                    "content": ""}
    assert (last["prompt_eval_count"], last["eval_count"]) == (5, 3)
    assert last["prompt_eval_duration"] == 500_000_000 and last["eval_duration"] == 200_000_000
    assert last["load_duration"] == 0 and last["total_duration"] > 0


def test_a_streamed_tool_call_comes_whole_before_the_last_object():
    pieces = ["Checking", ".\n<tool", '_call>\n{"name": "get_', 'weather", "arguments": {"ci', 'ty": "Paris"}}',
              "\n</tool_call>"]
    chunks = run_renderer(pieces, tools=WEATHER)
    contents = "".join(c["message"]["content"] for c in chunks)
    calls = [c["message"]["tool_calls"] for c in chunks if c["message"].get("tool_calls")]
    assert contents == "Checking."
    assert calls == [[{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]]
    assert chunks[-1]["done"] and chunks[-1]["done_reason"] == "stop"
    assert "<tool_call>" not in contents


def test_done_reasons():
    assert [ol.done_reason(r) for r in ("stop", "length", "cancelled", None)] == ["stop", "length", "stop", "stop"]
    assert ol.residency_response("chat", "tiny", "load")["done_reason"] == "load"
    assert ol.residency_response("generate", "tiny", "unload") | {"created_at": ""} == {
        "model": "tiny", "created_at": "", "response": "", "done": True, "done_reason": "unload"}


MODEL = SimpleNamespace(name="qwen", path="/models/qwen2.5-0.5b-q4_k_m.gguf", format="gguf", architecture="qwen2",
                        parameter_count=494_032_768, quantization="q4_k_m", context_length=32768,
                        size_bytes=397_808_192, chat_template="{{ messages }}",
                        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))


def test_a_library_model_in_ollama_s_list():
    entry = ol.model_entry(MODEL)
    assert entry["name"] == entry["model"] == "qwen" and entry["size"] == 397_808_192
    assert entry["modified_at"] == "2025-01-02T03:04:05.000000Z"
    assert len(entry["digest"]) == 64 and entry["digest"] == ol.model_entry(MODEL)["digest"]
    assert entry["details"] == {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                                "parameter_size": "494.0M", "quantization_level": "Q4_K_M"}


def test_show_describes_the_model():
    shown = ol.show_response(MODEL, context_length=4096, capabilities=["completion"], file_name="qwen.gguf")
    assert shown["template"] == "{{ messages }}" and shown["parameters"] == "num_ctx 4096"
    assert "FROM qwen.gguf" in shown["modelfile"]
    assert shown["model_info"]["general.architecture"] == "qwen2"
    assert shown["model_info"]["qwen2.context_length"] == 32768


@pytest.mark.parametrize(("count", "text"), [(0, ""), (950, "950"), (8_030_261_248, "8.0B"),
                                             (494_032_768, "494.0M"), (70_553_706_496, "70.6B")])
def test_parameter_sizes_are_spelled_as_ollama_does(count, text):
    assert ol.parameter_size(count) == text


def test_errors_are_one_string():
    assert ol.error_body(401, {"message": "Missing or invalid API key.", "type": "authentication_error"}) == {
        "error": "Missing or invalid API key."}
    assert ol.stream_error({"kind": "error", "message": "boom", "status": 503}) == {"error": "boom"}
