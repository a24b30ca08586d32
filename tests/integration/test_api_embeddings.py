"""POST /v1/embeddings on a real embedded server, through the official client and raw HTTP."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import openai
import pytest

from tests.conftest import openai_client


def post(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {server.api_key}"})


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_it_embeds_a_list_of_inputs_one_vector_each_in_order(embedded_server):
    response = openai_client(embedded_server).embeddings.create(
        model="tiny", input=["first text", "second text", "first text"], encoding_format="float")
    assert response.object == "list" and response.model == "tiny"
    assert [d.index for d in response.data] == [0, 1, 2]
    assert all(d.object == "embedding" and len(d.embedding) == 64 for d in response.data)
    assert response.data[0].embedding == response.data[2].embedding != response.data[1].embedding
    assert all(math.isclose(dot(d.embedding, d.embedding), 1.0, rel_tol=1e-4) for d in response.data)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_it_sends_base64_as_little_endian_float32_the_client_decodes(embedded_server):
    as_float = post(embedded_server, {"model": "tiny", "input": "some text", "encoding_format": "float"}).json()
    as_base64 = post(embedded_server, {"model": "tiny", "input": "some text", "encoding_format": "base64"}).json()
    raw = base64.b64decode(as_base64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 64
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
               for a, b in zip(decoded, as_float["data"][0]["embedding"], strict=True))
    # The official client asks for base64 by default and decodes it.
    client_vector = openai_client(embedded_server).embeddings.create(model="tiny", input="some text").data[0].embedding
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(client_vector, decoded, strict=True))


@pytest.mark.slow
def test_it_places_related_sentences_closer_with_the_demo_model(embedded_server):
    data = openai_client(embedded_server).embeddings.create(
        model="demo", input=["The cat sat on the mat.", "A kitten rested on the rug.",
                             "Quarterly tax filings are due in April."]).data
    cat, kitten, taxes = (d.embedding for d in data)
    assert dot(cat, kitten) > dot(cat, taxes)


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "input": ""}, "input"),
    ({"model": "tiny", "input": []}, "input"),
    ({"model": "tiny", "input": ["ok", ""]}, "input"),
    ({"model": "tiny", "input": [1, 2, 3]}, "input"),
    ({"model": "tiny", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "tiny"}, "input"),
    ({"model": "tiny", "input": "x", "dimensions": 0}, "dimensions"),
])
def test_it_rejects_invalid_embedding_requests_naming_the_parameter(embedded_server, body, param):
    response = post(embedded_server, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_it_refuses_dimensions_other_than_the_models(embedded_server):
    response = post(embedded_server, {"model": "tiny", "input": "x", "dimensions": 32})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"
    assert post(embedded_server, {"model": "tiny", "input": "x", "dimensions": 64}).status_code == 200


def test_it_refuses_an_input_over_the_context_with_context_length_exceeded(embedded_server):
    response = post(embedded_server, {"model": "tiny", "input": ["fine", "word " * 2000]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "input[1]" in response.json()["error"]["message"]


def test_it_answers_404_for_embeddings_of_an_unknown_model(embedded_server):
    with pytest.raises(openai.NotFoundError):
        openai_client(embedded_server).embeddings.create(model="nope", input="x")


def test_it_refuses_embeddings_from_a_model_whose_backends_cannot_embed(embedded_server):
    # hf-mlx runs on mlx, then torch; hf-tiny's chain reaches llama.cpp (converted) and embeds
    response = post(embedded_server, {"model": "hf-mlx", "input": "x"})
    assert response.status_code == 400
    assert "GGUF" in response.json()["error"]["message"]
