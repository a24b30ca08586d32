"""TorchBackend as the worker sees it: a BatchModel of a tiny real model (qwen3), its slots, its text and its
sampler, and requests served through the scheduler and the one output processor."""

from __future__ import annotations

import pytest
import torch
import transformers  # noqa: F401  (build_tiny_model's reference)

from inference.engine.base import GenerationRequest, InvalidRequest, ModelSpec
from inference.engine.batch import KVCacheFull, SlotWork
from inference.engine.output import OutputProcessor
from inference.engine.sampling import SamplingParams
from inference.engine.scheduler import Scheduler, Sequence
from inference.engine.text import StreamingDetokenizer
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.batch_model import TorchBatchModel
from tests.unit.torch_models import build_tiny_model

GREEDY = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("qwen3"), "qwen3")


def load(model_dir, **spec) -> TorchBatchModel:
    fields = dict(n_ctx=96, n_slots=2, options={"device": "cpu", "dtype": "float32"}) | spec
    return TorchBackend().load(ModelSpec(path=str(model_dir), format="hf-safetensors", **fields))


@pytest.fixture(scope="module")
def model(model_dir):
    loaded = load(model_dir)
    yield loaded
    loaded.close()


def fill(model, slot: int, n_tokens: int, start: int = 0) -> None:
    model.decode([SlotWork(slot, [5] * n_tokens, start, False)])


# -- slots and the KV cache ---------------------------------------------------------------------------


def test_it_gives_each_slot_a_row_of_n_ctx_positions(model):
    assert (model.n_slots, model.n_ctx, model.kv_capacity) == (2, 96, 192)
    assert model.cache.keys[0].shape[0] == 2 and model.cache.keys[0].shape[2] == 96  # (slots, Hkv, n_ctx, D)
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    assert model.memory_bytes == weights + model.cache.nbytes()


@pytest.mark.parametrize(("spec", "n_ctx", "kv_capacity"), [
    (dict(n_ctx=1000, n_slots=3), 256, 768),  # the model has 256 positions
    (dict(n_ctx=96, n_slots=3, kv_tokens=200), 96, 200),  # kv_tokens: what the slots hold together
    (dict(n_ctx=96, n_slots=3, kv_tokens=40), 40, 40),  # and no sequence holds more
])
def test_the_context_is_the_smallest_of_the_spec_the_model_and_kv_tokens(model_dir, spec, n_ctx, kv_capacity):
    loaded = load(model_dir, **spec)
    assert (loaded.n_ctx, loaded.kv_capacity) == (n_ctx, kv_capacity)
    assert loaded.cache.keys[0].shape[2] == n_ctx
    loaded.close()


def test_a_slot_refuses_to_grow_past_n_ctx_and_keeps_what_it_held(model):
    model.kv_trim(0, 0)
    fill(model, 0, 90)
    with pytest.raises(KVCacheFull):
        fill(model, 0, 7, start=90)
    assert model.lengths[0] == 90
    fill(model, 0, 6, start=90)  # exactly n_ctx
    assert model.lengths[0] == 96


def test_kv_tokens_bound_what_the_slots_hold_together(model_dir):
    loaded = load(model_dir, n_ctx=64, kv_tokens=64)
    fill(loaded, 0, 40)
    with pytest.raises(KVCacheFull):
        fill(loaded, 1, 30)
    assert loaded.lengths == [40, 0]
    loaded.kv_trim(0, 10)
    fill(loaded, 1, 30)
    assert loaded.lengths == [10, 30]
    loaded.close()


def test_new_tokens_may_not_leave_a_gap_after_what_a_slot_holds(model):
    model.kv_trim(1, 0)
    fill(model, 1, 4)
    with pytest.raises(ValueError, match="cannot start at 6"):
        fill(model, 1, 2, start=6)


def test_a_saved_slot_is_a_cpu_copy_of_its_positions_in_every_layer(model):
    model.kv_trim(0, 0)
    fill(model, 0, 12)
    saved = model.kv_save(0, 10)
    keys, values = saved.data
    args = model.weights.args
    assert keys.shape == values.shape == (args.n_layers, args.n_kv_heads, 10, args.head_dim)
    assert keys.device.type == "cpu" and saved.n_tokens == 10
    assert saved.nbytes == 2 * keys.numel() * keys.element_size()
    assert torch.equal(keys[1], model.cache.keys[1][0, :, :10])
    fill(model, 0, 12)  # the slot changes; the saved copy does not
    assert torch.equal(keys[1], saved.data[0][1])
    model.kv_restore(1, saved)
    assert model.lengths[1] == 10 and torch.equal(model.cache.values[0][1, :, :10], values[0])


# -- text ---------------------------------------------------------------------------------------------


def test_chat_messages_use_the_template_and_parse_its_special_tokens(model):
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}])
    rendered = model.render_prompt(request)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = model.tokenize(rendered)
    vocab = model.tokenizer.tokenizer
    assert ids[0] == vocab.token_to_id("<s>")
    assert ids.count(vocab.token_to_id("<|im_start|>")) == 2


def test_a_raw_prompt_is_the_text_the_model_sees(model):
    assert model.render_prompt(GenerationRequest(prompt="Hearth is")) == "Hearth is"
    with pytest.raises(InvalidRequest):
        model.render_prompt(GenerationRequest())


def test_a_prompt_already_starting_with_bos_gets_no_second_one(model):
    bos = model.tokenizer.bos_id
    assert model.tokenize("<s>hello")[:2].count(bos) == 1
    assert model.tokenize("hello")[0] == bos


def test_the_end_of_sequence_and_end_of_turn_tokens_end_a_generation(model):
    vocab = model.tokenizer.tokenizer
    assert {vocab.token_to_id("</s>"), vocab.token_to_id("<|im_end|>")} <= model.eog_ids


def test_detokenized_text_streams_whole_characters_only(model):
    text = "café 日本語 🔥 done"
    ids = model.tokenize(text)[1:]  # without BOS
    assert model.detokenize(ids) == text
    detokenizer = StreamingDetokenizer(model.detokenize)
    pieces = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


# -- sampling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [
    GenerationRequest(prompt="x", structure={"type": "json_schema", "schema": {"type": "object"}}),
    GenerationRequest(prompt="x", logprobs=2),
])
def test_it_refuses_what_its_capabilities_do_not_offer(model, request_):
    with pytest.raises(InvalidRequest, match="llamacpp"):
        model.sampler(request_, [1, 2], 2)


def test_a_sampler_keeps_the_prompt_and_each_sampled_token_as_its_history(model):
    prompt = model.tokenize("Hearth is")
    sampler = model.sampler(GREEDY, prompt, len(prompt))
    model.kv_trim(0, 0)
    first = model.decode([SlotWork(0, prompt, 0, True, sampler)])[0].token
    second = model.decode([SlotWork(0, [first], len(prompt), True, sampler)])[0].token
    assert sampler.history == prompt + [first, second]


# -- through the scheduler and the output processor --------------------------------------------------------

REQUESTS = [
    GenerationRequest(prompt="The quick brown fox", sampling=SamplingParams(temperature=0), max_tokens=12),
    GenerationRequest(messages=[{"role": "user", "content": "Hearth?"}], sampling=SamplingParams(temperature=0),
                      max_tokens=20),
    GenerationRequest(prompt="one two three", sampling=SamplingParams(temperature=0.9, seed=11), max_tokens=16),
]


def serve(model, requests: list[GenerationRequest], slots: int) -> list[tuple[str, str]]:
    """(text, finish reason) of each request, served by one scheduler `slots` at a time."""
    scheduler = Scheduler(model, chunk_tokens=8, slots=slots)
    processors = {}
    for i, request in enumerate(requests):
        prompt = model.tokenize(model.render_prompt(request))
        processors[str(i)] = OutputProcessor(model.detokenize, model.eog_ids, request.max_tokens or 32,
                                             stop=request.stop, n_prompt=len(prompt))
        scheduler.add(Sequence(str(i), f"user{i % 2}", prompt, model.sampler(request, prompt, len(prompt)),
                               n_prompt=len(prompt)))
    while scheduler.has_work():
        for output in scheduler.step():
            processor = processors[output.sequence.id]
            processor.add(output.token)
            if processor.finished:
                scheduler.finish(output.sequence.id)
    return [(processors[str(i)].text, processors[str(i)].finish_reason) for i in range(len(requests))]


def test_requests_served_together_get_what_each_gets_alone(model_dir):
    loaded = load(model_dir, n_slots=3, n_ctx=64)
    alone = serve(loaded, REQUESTS, slots=1)
    assert all(text and reason == "length" for text, reason in alone)
    assert serve(loaded, REQUESTS, slots=3) == alone
    stop = alone[1][0][3:6]
    with_stop = [REQUESTS[0], GenerationRequest(messages=REQUESTS[1].messages, sampling=REQUESTS[1].sampling,
                                                max_tokens=20, stop=(stop,))]
    text, reason = serve(loaded, with_stop, slots=2)[1]
    assert (text, reason) == (alone[1][0][: alone[1][0].index(stop)], "stop")
    loaded.close()


def test_closing_lets_go_of_the_weights_and_the_cache(model_dir):
    loaded = load(model_dir)
    loaded.close()
    assert loaded.model is None and loaded.cache is None and loaded.weights is None
