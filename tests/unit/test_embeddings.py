"""The llama.cpp embedding context on a tiny real GGUF: one normalised vector per input, pooling, limits."""

from __future__ import annotations

import math

import pytest

from inference.engine.base import BackendUnavailable, ContextLengthExceeded, ModelSpec
from inference.engine.embeddings import LlamaCppEmbeddingModel, pooling_for


@pytest.fixture(scope="module")
def embedder(tiny_gguf):
    model = LlamaCppEmbeddingModel(ModelSpec(path=str(tiny_gguf), format="gguf", n_ctx=128, n_gpu_layers=0,
                                             n_threads=1))
    yield model
    model.close()


def test_it_gives_one_unit_length_vector_per_input_in_order(embedder):
    result = embedder.embed(["hello world", "something else", "hello world"])
    assert len(result.vectors) == 3
    assert all(len(v) == embedder.dimensions == 64 for v in result.vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in result.vectors)
    assert result.vectors[0] == result.vectors[2]
    assert result.vectors[0] != result.vectors[1]
    texts = ["hello world", "something else", "hello world"]
    assert result.prompt_tokens == sum(len(embedder.tokenize(t)) for t in texts)


def test_it_embeds_the_same_text_the_same_whatever_came_before(embedder):
    alone = embedder.embed(["a short text"]).vectors[0]
    embedder.embed(["a much longer text that fills more of the context " * 3])
    assert embedder.embed(["a short text"]).vectors[0] == alone


def test_it_mean_pools_a_model_that_names_no_pooling(embedder):
    assert embedder.pooling_name == "mean"


def test_it_keeps_the_pooling_a_model_declares():
    import llama_cpp

    assert pooling_for({"bert.pooling_type": "2"}, "bert") == llama_cpp.LLAMA_POOLING_TYPE_CLS
    assert pooling_for({"qwen3.pooling_type": "3"}, "qwen3") == llama_cpp.LLAMA_POOLING_TYPE_LAST
    assert pooling_for({"llama.pooling_type": "0"}, "llama") == llama_cpp.LLAMA_POOLING_TYPE_MEAN
    assert pooling_for({}, "llama") == llama_cpp.LLAMA_POOLING_TYPE_MEAN


def test_it_refuses_an_input_longer_than_its_context_naming_it(embedder):
    with pytest.raises(ContextLengthExceeded, match=r"input\[1\] has \d+ tokens"):
        embedder.embed(["short", "word " * 400])


def test_it_refuses_a_model_that_is_not_gguf(tiny_hf):
    with pytest.raises(BackendUnavailable, match="GGUF"):
        LlamaCppEmbeddingModel(ModelSpec(path=str(tiny_hf), format="hf-safetensors"))
