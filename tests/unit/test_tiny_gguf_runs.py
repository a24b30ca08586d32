"""The tiny GGUF the whole suite builds is a real model: llama.cpp loads it, tokenizes it, generates."""

from __future__ import annotations

import llama_cpp
import pytest

from tests import factories


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny_llama(request, tmp_path_factory):
    path = factories.build_tiny_gguf(
        tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf", arch=request.param
    )
    model = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    yield model
    model.close()


def test_it_loads_with_the_vocabulary_as_built(tiny_llama):
    assert tiny_llama.n_vocab() == len(factories.tiny_spm_vocab())
    assert tiny_llama.n_ctx() == 256
    assert tiny_llama.token_bos() == factories.TINY_GGUF_BOS_ID
    assert tiny_llama.token_eos() == factories.TINY_GGUF_EOS_ID


@pytest.mark.parametrize(
    "text, special, expected_first",
    [
        (b"<|im_start|>user", True, factories.TINY_GGUF_IM_START_ID),
        (b"<|im_end|>", True, factories.TINY_GGUF_IM_END_ID),
    ],
)
def test_it_tokenizes_chatml_markers_into_control_tokens(tiny_llama, text, special, expected_first):
    tokens = tiny_llama.tokenize(text, add_bos=False, special=special)
    assert tokens[0] == expected_first


def test_it_treats_chatml_markers_as_plain_text_unless_asked(tiny_llama):
    tokens = tiny_llama.tokenize(b"<|im_start|>user", add_bos=False, special=False)
    assert factories.TINY_GGUF_IM_START_ID not in tokens
    assert len(tokens) > 1


def test_it_round_trips_text_through_its_vocabulary(tiny_llama):
    text = "hello world, the answer is 42! ünïcödé"
    tokens = tiny_llama.tokenize(text.encode(), add_bos=False)
    assert tiny_llama.detokenize(tokens).decode().strip() == text


def _complete(model, seed: int) -> tuple[str, int]:
    model.reset()
    output = model.create_completion(
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        max_tokens=12,
        temperature=0.9,
        seed=seed,
    )
    return output["choices"][0]["text"], output["usage"]["completion_tokens"]


def test_it_generates_the_same_tokens_for_the_same_seed(tiny_llama):
    text, n_tokens = _complete(tiny_llama, seed=7)

    assert n_tokens > 0 and text
    assert _complete(tiny_llama, seed=7) == (text, n_tokens)


def test_it_generates_other_tokens_for_another_seed(tiny_llama):
    assert _complete(tiny_llama, seed=7) != _complete(tiny_llama, seed=8)
