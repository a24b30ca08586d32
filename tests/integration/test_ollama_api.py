"""Ollama's API (/api/...) of a real embedded Hearth server, driven by the official `ollama` Python client with
Hearth's API key, and by raw HTTP where the wire format itself is the point."""

from __future__ import annotations

import json
import math
import time

import httpx
import jsonschema_rs
import ollama
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GREEDY = {"temperature": 0, "seed": 7}
HELLO = [{"role": "user", "content": "Hello there"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer"}, "role": {"enum": ["admin", "member"]}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def client(server, api_key: str | None = None) -> ollama.Client:
    return ollama.Client(host=server.base_url, headers={"Authorization": f"Bearer {api_key or server.api_key}"},
                         timeout=120)


def post(server, path: str, body, *, key: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.api_key}"} if key else {}
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(f"{server.base_url}{path}", content=content, headers=headers, timeout=120)


def ndjson_lines(server, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as response:
        return response, [json.loads(line) for line in response.iter_lines() if line]


def loaded_names(server) -> set[str]:
    return {model.model for model in client(server).ps().models}


def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# --- the library ----------------------------------------------------------------------------------------------


def test_it_lists_the_same_models_as_v1_models_with_ollama_details(embedded_server):
    listed = client(embedded_server).list().models
    v1 = httpx.get(f"{embedded_server.base_url}/v1/models", timeout=30,
                   headers={"Authorization": f"Bearer {embedded_server.api_key}"}).json()["data"]
    assert [m.model for m in listed] == [m["id"] for m in v1]
    tiny = next(m for m in listed if m.model == "tiny")
    assert tiny.details.format == "gguf" and tiny.details.family and tiny.details.quantization_level
    assert tiny.size > 0 and len(tiny.digest) == 64 and tiny.modified_at is not None
    assert next(m for m in listed if m.model == "hf-tiny").details.format == "safetensors"


def test_it_shows_a_model_with_its_template_and_parameters(embedded_server):
    shown = client(embedded_server).show("tiny")
    assert shown.details.format == "gguf" and shown.template
    assert shown.parameters.startswith("num_ctx ") and "FROM " in shown.modelfile
    assert shown.modelinfo["general.architecture"] == shown.details.family
    assert {"completion", "embedding"} <= set(shown.capabilities)


def test_it_answers_the_version_without_a_key(embedded_server):
    response = httpx.get(f"{embedded_server.base_url}/api/version", timeout=30)
    assert response.status_code == 200 and response.json()["version"].count(".") == 2


def test_a_name_with_the_latest_tag_is_the_library_s_model(embedded_server):
    assert client(embedded_server).show("tiny:latest").details.format == "gguf"
    reply = client(embedded_server).chat(model="tiny:latest", messages=HELLO, options={"num_predict": 2}, stream=False)
    assert reply.model == "tiny:latest" and reply.done


def test_the_docs_and_schema_stay_at_api_docs(embedded_server):
    assert httpx.get(f"{embedded_server.base_url}/api/docs", timeout=30).status_code == 200
    schema = httpx.get(f"{embedded_server.base_url}/api/openapi.json", timeout=30)
    assert schema.status_code == 200 and {"/api/chat", "/api/generate", "/api/tags"} <= set(schema.json()["paths"])


# --- chat and generate ----------------------------------------------------------------------------------------


def test_it_answers_a_chat_whole_with_ollama_s_statistics(embedded_server):
    reply = client(embedded_server).chat(model="tiny", messages=HELLO, stream=False,
                                         options={**GREEDY, "num_predict": 12})
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason == "length"
    assert reply.eval_count == 12 and reply.prompt_eval_count > 0
    assert reply.total_duration > 0 and reply.prompt_eval_duration > 0 and reply.created_at.endswith("Z")


def test_it_streams_the_same_chat_it_answers_whole(embedded_server):
    options = {**GREEDY, "num_predict": 16}
    whole = client(embedded_server).chat(model="tiny", messages=HELLO, stream=False, options=options)
    parts = list(client(embedded_server).chat(model="tiny", messages=HELLO, stream=True, options=options))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 16


def test_a_stream_is_ndjson_with_hearth_s_headers(embedded_server):
    response, lines = ndjson_lines(embedded_server, "/api/chat", {"model": "tiny", "messages": HELLO,
                                                                  "options": {"num_predict": 3}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["x-hearth-backend"] == "llamacpp" and response.headers["x-hearth-job"]
    assert lines[-1]["done"] is True and lines[-1]["message"] == {"role": "assistant", "content": ""}
    assert all(set(line) >= {"model", "created_at", "message", "done"} for line in lines)


def test_it_generates_from_a_prompt_streamed_and_whole(embedded_server):
    options = {**GREEDY, "num_predict": 10}
    whole = client(embedded_server).generate(model="tiny", prompt="Why is the sky blue?", options=options)
    parts = list(client(embedded_server).generate(model="tiny", prompt="Why is the sky blue?", options=options,
                                                  stream=True))
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 10 and whole.response
    assert "".join(p.response for p in parts) == whole.response and parts[-1].done


def test_generate_with_a_system_prompt_reads_it(embedded_server):
    plain = client(embedded_server).generate(model="tiny", prompt="Hi", options={**GREEDY, "num_predict": 4})
    told = client(embedded_server).generate(model="tiny", prompt="Hi", system="You are terse.",
                                            options={**GREEDY, "num_predict": 4})
    assert told.prompt_eval_count > plain.prompt_eval_count


def test_raw_generate_sends_the_prompt_as_it_is(embedded_server):
    raw = client(embedded_server).generate(model="tiny", prompt="Once upon a time", raw=True,
                                           options={**GREEDY, "num_predict": 5})
    templated = client(embedded_server).generate(model="tiny", prompt="Once upon a time",
                                                 options={**GREEDY, "num_predict": 5})
    assert raw.eval_count == 5 and raw.prompt_eval_count < templated.prompt_eval_count


def test_num_predict_and_stop_are_honoured(embedded_server):
    reply = client(embedded_server).chat(model="tiny", messages=HELLO, stream=False,
                                         options={**GREEDY, "num_predict": 24})
    stop = reply.message.content[3:6]
    cut = client(embedded_server).chat(model="tiny", messages=HELLO, stream=False,
                                       options={**GREEDY, "num_predict": 24, "stop": [stop]})
    assert cut.done_reason == "stop" and stop not in cut.message.content
    assert reply.message.content.startswith(cut.message.content)


def test_a_json_schema_format_answers_valid_json(embedded_server):
    validator, checked = jsonschema_rs.Draft202012Validator(PERSON), 0
    for seed in range(10):
        reply = client(embedded_server).chat(model="tiny", messages=[{"role": "user", "content": "A person?"}],
                                             format=PERSON, options={"seed": seed, "num_predict": 80}, stream=False)
        if reply.done_reason == "stop" and "\ufffd" not in reply.message.content:  # see test_api_structured.py
            assert validator.is_valid(json.loads(reply.message.content)), reply.message.content
            checked += 1
    assert checked >= 3


def test_json_format_answers_a_json_object(embedded_server):
    """The same requests as test_api_structured.py's json_object test, through Ollama's API."""
    answers = [client(embedded_server).chat(model="tiny", messages=[{"role": "user", "content": "Describe a person "
                                                                                                "as JSON."}],
                                            format="json", options={"seed": seed, "num_predict": 120}, stream=False)
               for seed in range(6)]
    finished = [a.message.content for a in answers if a.done_reason == "stop"]
    assert finished and all(isinstance(json.loads(text), dict) for text in finished)


def test_a_chat_with_tools_answers_content_or_calls_of_those_tools(embedded_server):
    """Ollama has no tool_choice: the tiny model decides (it writes gibberish, so no call is expected); the calls
    in a reply are read by api/tools.py (tests/unit/test_ollama_schemas.py shows them come back as objects)."""
    for stream in (False, True):
        replies = client(embedded_server).chat(model="tiny", messages=HELLO, tools=WEATHER, stream=stream,
                                               options={**GREEDY, "num_predict": 8})
        last = replies if not stream else list(replies)[-1]
        assert last.done and last.eval_count == 8
        for call in (replies.message.tool_calls or []) if not stream else []:
            assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)


def test_a_conversation_with_an_earlier_tool_call_is_accepted(embedded_server):
    messages = [*HELLO, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "12 degrees", "tool_name": "get_weather"}]
    reply = client(embedded_server).chat(model="tiny", messages=messages, stream=False, options={"num_predict": 4})
    assert reply.done


def test_it_returns_log_probabilities_when_asked(embedded_server):
    reply = client(embedded_server).chat(model="tiny", messages=HELLO, stream=False, logprobs=True, top_logprobs=2,
                                         options={**GREEDY, "num_predict": 4})
    assert len(reply.logprobs) == 4 and all(len(entry.top_logprobs) == 2 for entry in reply.logprobs)
    assert all(entry.logprob <= 0 for entry in reply.logprobs)


# --- keep_alive: load and unload ----------------------------------------------------------------------------


def test_an_empty_request_loads_the_model_and_keep_alive_zero_unloads_it(embedded_server):
    loaded = client(embedded_server).chat(model="tiny", messages=[])
    assert loaded.done and loaded.done_reason == "load" and loaded.message.content == ""
    assert eventually(lambda: "tiny" in loaded_names(embedded_server))
    running = next(m for m in client(embedded_server).ps().models if m.model == "tiny")
    assert running.details.format == "gguf" and running.context_length > 0
    unloaded = client(embedded_server).generate(model="tiny", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""
    assert eventually(lambda: "tiny" not in loaded_names(embedded_server))
    assert client(embedded_server).generate(model="tiny").done_reason == "load"
    assert eventually(lambda: "tiny" in loaded_names(embedded_server))


def test_keep_alive_zero_on_a_request_unloads_after_the_answer(embedded_server):
    client(embedded_server).chat(model="tiny", messages=[])
    assert eventually(lambda: "tiny" in loaded_names(embedded_server))
    reply = client(embedded_server).chat(model="tiny", messages=HELLO, keep_alive=0, stream=False,
                                         options={"num_predict": 3})
    assert reply.done and reply.done_reason == "length"
    assert eventually(lambda: "tiny" not in loaded_names(embedded_server))
    parts = list(client(embedded_server).chat(model="tiny", messages=HELLO, keep_alive="5m", stream=True,
                                              options={"num_predict": 3}))
    assert parts[-1].done and eventually(lambda: "tiny" in loaded_names(embedded_server))


# --- embeddings -----------------------------------------------------------------------------------------------


def test_it_embeds_each_input_normalised(embedded_server):
    result = client(embedded_server).embed(model="tiny", input=["first text", "second text", "first text"])
    assert len(result.embeddings) == 3 and all(len(v) == 64 for v in result.embeddings)
    assert result.embeddings[0] == result.embeddings[2] != result.embeddings[1]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in result.embeddings)
    assert result.prompt_eval_count > 0 and result.model == "tiny"


def test_the_older_embeddings_endpoint_answers_one_vector(embedded_server):
    single = client(embedded_server).embeddings(model="tiny", prompt="first text").embedding
    assert single == client(embedded_server).embed(model="tiny", input="first text").embeddings[0]
    assert client(embedded_server).embed(model="tiny", input=[]).embeddings == []


# --- errors, in Ollama's shape ----------------------------------------------------------------------------------


def test_it_answers_an_unknown_model_with_404(embedded_server):
    with pytest.raises(ollama.ResponseError) as caught:
        client(embedded_server).chat(model="no-such-model", messages=HELLO, stream=False)
    assert caught.value.status_code == 404 and "no-such-model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client(embedded_server).show("no-such-model")
    assert caught.value.status_code == 404


def test_it_refuses_a_request_without_a_key_with_401(embedded_server):
    for path, body in (("/api/chat", {"model": "tiny", "messages": HELLO}), ("/api/tags", None)):
        response = (httpx.get(f"{embedded_server.base_url}{path}", timeout=30) if body is None
                    else post(embedded_server, path, body, key=False))
        assert response.status_code == 401 and isinstance(response.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as caught:
        client(embedded_server, api_key="hearth-not-a-key").list()
    assert caught.value.status_code == 401 and "API key" in caught.value.error


@pytest.mark.parametrize(("body", "mentions"), [
    ({"model": "tiny", "messages": "hello"}, "messages"),
    ({"messages": HELLO}, "model"),
    ({"model": "tiny", "messages": HELLO, "options": {"temperature": 5}}, "options.temperature"),
    ({"model": "tiny", "messages": HELLO, "options": {"mirostat": 2}}, "Mirostat"),
    ({"model": "tiny", "messages": HELLO, "format": "yaml"}, "format"),
    ({"model": "tiny", "messages": HELLO, "keep_alive": "soon"}, "keep_alive"),
    ({"model": "tiny", "messages": HELLO, "think": True}, "think"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "see", "images": ["aGk="]}]}, "images"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
])
def test_it_refuses_a_bad_chat_with_400_naming_the_field(embedded_server, body, mentions):
    response = post(embedded_server, "/api/chat", body)
    assert response.status_code == 400 and set(response.json()) == {"error"}
    assert mentions in response.json()["error"]


@pytest.mark.parametrize(("body", "mentions"), [
    ({"model": "tiny", "prompt": "hi", "raw": True, "system": "x"}, "system"),
    ({"model": "tiny", "prompt": "hi", "images": ["aGk="]}, "images"),
    ({"model": "tiny", "prompt": "hi", "suffix": "end"}, "suffix"),
    ({"model": "tiny", "prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
])
def test_it_refuses_what_generate_cannot_do_with_400(embedded_server, body, mentions):
    response = post(embedded_server, "/api/generate", body)
    assert response.status_code == 400 and mentions in response.json()["error"]


def test_it_answers_bad_json_with_400_in_ollama_s_shape(embedded_server):
    for content in (b"{not json", b"", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\u0000"}]}'):
        response = post(embedded_server, "/api/chat", content)
        assert response.status_code == 400 and isinstance(response.json()["error"], str)


def test_an_unknown_path_under_api_is_a_json_404(embedded_server):
    for path in ("/api/nothing", "/api", "/api/chat/extra", "/api/blobs/sha256:00"):
        response = httpx.get(f"{embedded_server.base_url}{path}", timeout=30)
        assert response.status_code == 404 and isinstance(response.json()["error"], str), path


def test_pull_is_refused_pointing_at_the_model_library(embedded_server):
    with pytest.raises(ollama.ResponseError) as caught:
        client(embedded_server).pull("llama3.2", stream=False)
    assert caught.value.status_code == 400 and "/models/" in caught.value.error
    response = httpx.request("DELETE", f"{embedded_server.base_url}/api/delete", json={"model": "tiny"},
                             headers={"Authorization": f"Bearer {embedded_server.api_key}"}, timeout=30)
    assert response.status_code == 400 and "model library" in response.json()["error"]
    assert "tiny" in {m.model for m in client(embedded_server).list().models}


# --- no 5xx, whatever the body --------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=3), max_leaves=8)
FIELDS = {"model": st.sampled_from(["tiny", "nope", "", "tiny:latest"]) | JSON,
          "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]) | JSON,
                                                      "content": st.text(max_size=8) | JSON}), max_size=2) | JSON,
          "prompt": st.text(max_size=8) | JSON, "input": st.text(max_size=8) | JSON,
          "options": st.dictionaries(st.sampled_from(["temperature", "num_predict", "top_k", "stop", "seed",
                                                      "mirostat", "num_ctx"]), JSON, max_size=3) | JSON,
          "format": st.sampled_from(["json", "", "xml"]) | JSON, "keep_alive": JSON, "stream": JSON,
          "tools": JSON, "raw": JSON, "think": JSON}


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"])
def test_no_body_gets_a_server_error(embedded_server, path):
    failures = []

    @settings(max_examples=25, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=st.fixed_dictionaries({}, optional=FIELDS) | JSON)
    def check(body):
        if isinstance(body, dict) and body.get("model") in ("tiny", "tiny:latest"):
            body.setdefault("options", {})
            if isinstance(body["options"], dict):
                body["options"]["num_predict"] = 2  # keep any generation short
        response = post(embedded_server, path, body)
        if response.status_code >= 500 or not (response.status_code == 200 or "error" in response.json()):
            failures.append(f"{response.status_code} {body!r}: {response.text[:300]}")

    check()
    assert not failures, failures[:3]
