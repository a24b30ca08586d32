"""POST /v1/completions (legacy text completion) and GET /v1/models/{id} on a real embedded server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import openai_client

GREEDY = {"temperature": 0, "seed": 7}


def complete(client, **overrides):
    arguments = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 12, **GREEDY, **overrides}
    return client.completions.create(**arguments)


def test_it_retrieves_one_model_by_id(embedded_server):
    model = openai_client(embedded_server).models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model" and model.owned_by == "hearth"
    assert model.created > 1_600_000_000


def test_it_answers_404_model_not_found_for_an_unknown_model_id(embedded_server):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client(embedded_server).models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"


def test_it_completes_text_with_usage_and_finish_reason(embedded_server):
    completion = complete(openai_client(embedded_server))
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion" and completion.model == "tiny"
    choice = completion.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_it_defaults_max_tokens_to_16_as_openai_does(embedded_server):
    completion = openai_client(embedded_server).completions.create(model="tiny", prompt="Hello", temperature=0)
    assert completion.usage.completion_tokens == 16


def test_it_streams_the_same_text_it_completes_whole(embedded_server):
    client = openai_client(embedded_server)
    whole = complete(client).choices[0].text
    chunks = list(complete(client, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_it_ends_a_completion_stream_with_done(embedded_server):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {embedded_server.api_key}"}) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    assert all(json.loads(line)["object"] == "text_completion" for line in lines[:-1])
    assert "usage" not in json.loads(lines[0])  # only with stream_options.include_usage


def test_it_cuts_a_completion_at_a_stop_string(embedded_server):
    client = openai_client(embedded_server)
    text = complete(client, max_tokens=40).choices[0].text
    stop = text[8:11]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    stopped = complete(client, max_tokens=40, stop=stop)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


def test_it_accepts_a_prompt_given_as_a_one_element_list(embedded_server):
    client = openai_client(embedded_server)
    assert complete(client, prompt=["Once upon a time"]).choices[0].text == complete(client).choices[0].text


@pytest.mark.parametrize(("extra", "param"), [
    ({"echo": True}, "echo"),
    ({"suffix": "the end"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"prompt": [[1, 2, 3]]}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
])
def test_it_refuses_completion_parameters_it_cannot_honour_naming_them(embedded_server, extra, param):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, **extra}
    response = httpx.post(f"{embedded_server.base_url}/v1/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {embedded_server.api_key}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
