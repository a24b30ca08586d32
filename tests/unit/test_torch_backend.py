"""TorchBackend as the server sees it: a stream of GenerationEvents from a tiny real model."""

from __future__ import annotations

import pytest
import transformers  # noqa: F401  (the reference these tests compare against)

from inference.engine.base import ContextLengthExceeded, GenerationRequest, ModelSpec
from inference.engine.sampling import SamplingParams
from inference.engine.text import StreamingDetokenizer
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.tokenizer import TextTokenizer
from tests.unit.torch_models import build_tiny_model

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("qwen3"), "qwen3")


@pytest.fixture(scope="module")
def loaded(model_dir):
    return TorchBackend().load(ModelSpec(path=str(model_dir), format="hf-safetensors", n_ctx=96))


def run(loaded, request, should_stop=lambda: False):
    return list(loaded.generate(request, should_stop))


def text_of(events):
    return "".join(e.text for e in events if e.kind == "token")


def test_it_streams_started_tokens_and_done(loaded):
    events = run(loaded, GenerationRequest(prompt="Hearth is", sampling=GREEDY, max_tokens=8))
    assert events[0].kind == "started" and events[0].prompt_tokens > 0
    assert events[-1].kind == "done"
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 8
    assert sum(1 for e in events if e.kind == "token" and e.token_id is not None) == 8
    assert events[-1].time_to_first_token is not None


def test_greedy_text_is_the_decoded_token_ids(loaded):
    events = run(loaded, GenerationRequest(prompt="The quick", sampling=GREEDY, max_tokens=16))
    ids = [e.token_id for e in events if e.token_id is not None]
    assert text_of(events) == loaded.tokenizer.decode(ids)


def test_a_stop_string_cuts_the_text_and_is_never_emitted(loaded):
    full = text_of(run(loaded, GenerationRequest(prompt="The quick", sampling=GREEDY, max_tokens=24)))
    stop = full[5:8]
    assert stop and stop not in full[:5]
    events = run(loaded, GenerationRequest(prompt="The quick", sampling=GREEDY, max_tokens=24, stop=(stop,)))
    assert text_of(events) == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"


def test_should_stop_cancels_between_tokens(loaded):
    seen = []

    def should_stop():
        return len(seen) >= 3

    events = []
    for event in loaded.generate(GenerationRequest(prompt="Hearth", sampling=GREEDY, max_tokens=50), should_stop):
        events.append(event)
        if event.kind == "token":
            seen.append(event)
    assert events[-1].finish_reason == "cancelled"
    assert events[-1].completion_tokens == 3


def test_the_same_seed_gives_the_same_text(loaded):
    sampling = SamplingParams(temperature=1.0, seed=7)
    first = text_of(run(loaded, GenerationRequest(prompt="Hearth", sampling=sampling, max_tokens=20)))
    second = text_of(run(loaded, GenerationRequest(prompt="Hearth", sampling=sampling, max_tokens=20)))
    assert first == second


def test_it_refuses_a_prompt_longer_than_the_context(loaded):
    with pytest.raises(ContextLengthExceeded, match=r"\d+ tokens.*96 tokens"):
        run(loaded, GenerationRequest(prompt="word " * 200, sampling=GREEDY))


def test_the_context_filling_up_ends_with_length(loaded):
    prompt_tokens = len(loaded.tokenize("The quick"))
    events = run(loaded, GenerationRequest(prompt="The quick", sampling=GREEDY))
    assert events[-1].finish_reason in ("length", "stop")
    if events[-1].finish_reason == "length":
        assert events[-1].completion_tokens == 96 - prompt_tokens


def test_chat_messages_use_the_template_and_parse_its_special_tokens(loaded):
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}], sampling=GREEDY, max_tokens=2)
    rendered = loaded.render_prompt(request)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = loaded.tokenize(rendered)
    vocab = loaded.tokenizer.tokenizer
    assert ids[0] == vocab.token_to_id("<s>")
    assert ids.count(vocab.token_to_id("<|im_start|>")) == 2


def test_a_prompt_already_starting_with_bos_gets_no_second_one(loaded):
    bos = loaded.tokenizer.bos_id
    assert loaded.tokenize("<s>hello")[:2].count(bos) == 1
    assert loaded.tokenize("<s>hello")[1] != bos


def test_the_end_of_sequence_token_ends_with_stop(model_dir):
    tokenizer = TextTokenizer.from_hf_dir(model_dir)
    assert tokenizer.tokenizer.token_to_id("</s>") in tokenizer.stop_ids
    assert tokenizer.tokenizer.token_to_id("<|im_end|>") in tokenizer.stop_ids


def test_the_detokenizer_never_emits_half_a_character(model_dir):
    tokenizer = TextTokenizer.from_hf_dir(model_dir)
    text = "café 日本語 🔥 done"
    ids = tokenizer.encode(text)[1:]  # without BOS
    detokenizer = StreamingDetokenizer(tokenizer.decode)
    pieces = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
