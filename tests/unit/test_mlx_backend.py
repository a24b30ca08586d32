"""The MLX backend as a BatchModel, on tiny random models, for real on Linux CPU (`pip install "mlx[cpu]" mlx-lm`).

What every backend owes the scheduler is in test_batch_models.py (run with `-k mlx`); here is what is MLX's own:
the tokens match transformers', a sequence decodes the same beside others (sliding windows included), sampling
maps our parameters onto mlx-lm's, saved slots stay as saved, the memory counts the KV cache, conversions run.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from inference.engine.base import (
    BackendUnavailable,
    GenerationRequest,
    InvalidRequest,
    ModelRefused,
    ModelSpec,
)
from inference.engine.batch import KVCacheFull, SlotWork
from inference.engine.formats import detect_format
from inference.engine.mlx import MlxBackend, attention_windows, mlx_import_error
from inference.engine.mlx_convert import convert_hf_to_mlx
from inference.engine.output import OutputProcessor
from inference.engine.sampling import SamplingParams
from tests.factories import build_tiny_hf_dir
from tests.unit.mlx_models import BOS, EOS, build_tiny_llama

needs_mlx = pytest.mark.skipif(
    mlx_import_error() is not None,
    reason=f'mlx is not importable ({mlx_import_error()}): pip install "mlx[cpu]" mlx-lm',
)
GREEDY = SamplingParams(temperature=0.0)
PROMPT = "hello world"
OTHER_PROMPTS = ["the quick brown fox jumps", "one two three four five six seven", "Paris is the capital"]


def load(path, **spec) -> object:
    fields = {"format": "hf-safetensors", "n_ctx": 256, "n_slots": 4, **spec}
    return MlxBackend().load(ModelSpec(path=str(path), **fields))


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("mlx") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    model = load(tiny_llama_dir)
    yield model
    model.close()


def decode(model, prompt: list[int], n: int, *, slot: int = 0, sampling: SamplingParams = GREEDY,
           beside: dict[int, tuple[list[int], int, int]] | None = None) -> list[int]:
    """n tokens for `prompt` in `slot` (emptied first). `beside` maps other slots to (prompt, the step it joins,
    the step it leaves): those sequences decode greedily in the same batches, at their own positions."""
    beside = beside or {}
    request = GenerationRequest(prompt="", sampling=sampling)
    sequences = dict(sorted({slot: (prompt, 0, n), **beside}.items()))  # rows in slot order
    samplers = {s: model.sampler(request if s == slot else GenerationRequest(prompt="", sampling=GREEDY), p, len(p))
                for s, (p, _, _) in sequences.items()}
    outputs: dict[int, list[int]] = {s: [] for s in sequences}
    for s in sequences:
        model.kv_trim(s, 0)
    step = 0
    while len(outputs[slot]) < n:
        work = []
        for s, (p, joins, leaves) in sequences.items():
            if not joins <= step < leaves:
                continue
            if not outputs[s]:
                work.append(SlotWork(s, list(p), 0, True, samplers[s]))
            else:
                work.append(SlotWork(s, [outputs[s][-1]], len(p) + len(outputs[s]) - 1, True, samplers[s]))
        for sampled in model.decode(work):
            outputs[sampled.slot].append(sampled.token)
        step += 1
    for sampler in samplers.values():
        sampler.close()
    return outputs[slot]


def no_eos(model, **sampling) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, **sampling, "logit_bias": {t: -100.0 for t in model.eog_ids}})


def transformers_greedy(model_dir, prompt_ids, steps):
    """The reference: transformers' Llama, fp32, argmax over the full sequence at every step."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])  # (1, T)
    chosen = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids).logits[0, -1]  # (vocab,)
            top_two = torch.topk(logits, 2).values
            assert top_two[0] - top_two[1] > 1e-3, "a near tie in the fixture's greedy choice: reseed it"
            chosen.append(int(logits.argmax()))
            ids = torch.cat([ids, torch.tensor([[chosen[-1]]])], dim=1)
    return chosen


def mlx_lm_greedy_without_cache(model_dir, prompt_ids, steps):
    """The reference for windows: mlx-lm's own module, the whole sequence at every step (its mask applies the
    sliding window), no KV cache."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir)
    ids = list(prompt_ids)
    for _ in range(steps):
        logits = model(mx.array([ids]))[0, -1]  # (vocab,)
        ids.append(int(mx.argmax(logits).item()))
    return ids[len(prompt_ids) :]


# -- installed or not ----------------------------------------------------------------------------------


@needs_mlx
def test_it_is_available_when_mlx_imports():
    assert MlxBackend().unavailable_reason() is None


def test_it_explains_how_to_install_mlx_when_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # `import mlx_lm` now raises ImportError

    reason = MlxBackend().unavailable_reason()

    assert reason.startswith("mlx is not installed: pip install 'hearth[mlx]'")
    assert 'pip install "mlx[cpu]" mlx-lm' in reason
    with pytest.raises(BackendUnavailable, match="pip install"):
        MlxBackend().load(ModelSpec(path="/nowhere", format="mlx"))


# -- the same tokens, alone or beside others ----------------------------------------------------------


@needs_mlx
def test_it_decodes_the_same_greedy_tokens_as_transformers(tiny_llama, tiny_llama_dir):
    prompt_ids = tiny_llama.tokenize(PROMPT)

    assert decode(tiny_llama, prompt_ids, 32) == transformers_greedy(tiny_llama_dir, prompt_ids, 32)


@needs_mlx
def test_it_decodes_transformers_tokens_while_other_sequences_join_and_leave(tiny_llama, tiny_llama_dir):
    prompt_ids = tiny_llama.tokenize(PROMPT)
    others = [tiny_llama.tokenize(p) for p in OTHER_PROMPTS]
    beside = {0: (others[0], 0, 9), 1: (others[1], 3, 40), 3: (others[2], 7, 20)}  # slot: (prompt, joins, leaves)

    tokens = decode(tiny_llama, prompt_ids, 32, slot=2, beside=beside)

    assert tokens == transformers_greedy(tiny_llama_dir, prompt_ids, 32)


@needs_mlx
def test_it_keeps_a_sliding_window_layer_to_its_window_beside_other_sequences(tmp_path):
    windowed = build_tiny_hf_dir(tmp_path / "windowed", context_length=256,
                                 extra_config={"layer_types": ["sliding_attention", "full_attention"],
                                               "sliding_window": 4})
    full = build_tiny_hf_dir(tmp_path / "full", context_length=256)  # the same weights, full attention
    model = load(windowed, n_slots=2)
    prompt = model.tokenize("hello world the user said yes and then no")
    assert len(prompt) > 4
    expected = mlx_lm_greedy_without_cache(windowed, prompt, 16)
    assert expected != mlx_lm_greedy_without_cache(full, prompt, 16), "the window must change the output"

    beside = {0: (model.tokenize("one two three"), 0, 16)}
    assert decode(model, prompt, 16, slot=1, beside=beside) == expected
    model.close()


@needs_mlx
def test_each_row_of_a_batch_sees_its_own_positions_up_to_its_own_and_within_its_layers_window():
    from mlx_lm.models.cache import KVCache

    from inference.engine.mlx_slots import BatchLayout, SlotBatchCache

    layout = BatchLayout(starts=[0, 3], counts=[2, 1])  # row 0 reads two prompt tokens; row 1 decodes position 3
    rows_of = [KVCache(), KVCache()]
    yes, no = True, False

    full = SlotBatchCache(layout, rows_of).make_mask(2)  # (B, 1, N, L)
    windowed = SlotBatchCache(layout, rows_of, window=2).make_mask(2)  # a RotatingKVCache layer's own window
    named = SlotBatchCache(layout, rows_of).make_mask(2, window_size=2)  # the window the model names

    assert full[:, 0].tolist() == [[[yes, no, no, no], [yes, yes, no, no]],
                                   [[yes, yes, yes, yes], [yes, yes, yes, yes]]]  # row 1's second query: padding
    assert windowed[:, 0].tolist() == named[:, 0].tolist() == [[[yes, no, no, no], [yes, yes, no, no]],
                                                               [[no, no, yes, yes], [no, no, no, yes]]]


@needs_mlx
def test_it_refuses_a_model_that_keeps_recurrent_state():
    from mlx_lm.models import mamba

    args = mamba.ModelArgs(model_type="mamba", vocab_size=64, hidden_size=16, intermediate_size=32, state_size=4,
                           num_hidden_layers=2, conv_kernel=4, use_bias=False, use_conv_bias=True, time_step_rank=4)

    with pytest.raises(BackendUnavailable, match="ArraysCache"):
        attention_windows(mamba.Model(args), "mamba")


# -- tokens and text -----------------------------------------------------------------------------------


@needs_mlx
def test_it_does_not_add_a_second_bos(tiny_llama):
    assert tiny_llama.tokenize(BOS + PROMPT) == tiny_llama.tokenize(PROMPT)
    assert tiny_llama.tokenize(PROMPT).count(tiny_llama.tokenize("")[0]) == 1


@needs_mlx
def test_it_ends_generations_at_the_tokenizers_end_of_sequence_token(tiny_llama):
    assert tiny_llama.eog_ids == {tiny_llama.tokenize(EOS)[-1]}


@needs_mlx
def test_its_tokens_stream_through_the_output_processor_as_their_text(tiny_llama):
    tokens = decode(tiny_llama, tiny_llama.tokenize("café über"), 32, sampling=no_eos(tiny_llama))
    output = OutputProcessor(detokenize=tiny_llama.detokenize, eog_ids=tiny_llama.eog_ids, max_new_tokens=32)

    events = [event for token in tokens for event in output.add(token)]

    assert "".join(e["text"] for e in events if e["kind"] == "token") == tiny_llama.detokenize(tokens)
    assert (events[-1]["kind"], events[-1]["finish_reason"], events[-1]["completion_tokens"]) == ("done", "length", 32)


@needs_mlx
def test_it_renders_messages_with_the_sandboxed_template_without_a_second_bos(tiny_llama_dir):
    template = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    model = load(tiny_llama_dir, chat_template=template, n_slots=1)
    request = GenerationRequest(messages=[{"role": "user", "content": "hello"}])

    rendered = model.render_prompt(request)

    assert rendered == f"{BOS}user: hello\nassistant:"
    assert model.tokenize(rendered) == model.tokenize("user: hello\nassistant:")
    model.close()


# -- sampling ------------------------------------------------------------------------------------------


@needs_mlx
def test_it_gives_the_same_tokens_for_the_same_seed(tiny_llama):
    prompt = tiny_llama.tokenize(PROMPT)

    def sampled(seed):
        return decode(tiny_llama, prompt, 24, sampling=SamplingParams(temperature=1.0, seed=seed))

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)
    assert sampled(None) != sampled(None)  # without a seed, fresh randomness each time


@needs_mlx
@pytest.mark.parametrize(
    "penalty",
    [{"repeat_penalty": 1e6}, {"presence_penalty": 100.0}, {"frequency_penalty": 100.0}],
    ids=["repeat", "presence", "frequency"],
)
def test_it_penalizes_tokens_already_in_the_window(tiny_llama, penalty):
    prompt = tiny_llama.tokenize(PROMPT)
    plain = decode(tiny_llama, prompt, 32)
    assert len(set(plain)) < len(plain), "greedy decoding repeats itself without a penalty"

    penalized = decode(tiny_llama, prompt, 32, sampling=SamplingParams(temperature=0.0, repeat_last_n=-1, **penalty))

    assert len(set(prompt + penalized)) == len(prompt + penalized)


@needs_mlx
def test_penalties_look_back_only_over_repeat_last_n_tokens(tiny_llama):
    prompt = tiny_llama.tokenize(PROMPT)
    plain = decode(tiny_llama, prompt, 32)

    assert decode(tiny_llama, prompt, 32, sampling=SamplingParams(temperature=0.0, presence_penalty=100.0,
                                                                  repeat_last_n=0)) == plain


@needs_mlx
def test_it_rejects_a_logit_bias_outside_the_vocabulary(tiny_llama):
    request = GenerationRequest(prompt=PROMPT, sampling=SamplingParams(logit_bias={10_000: 5.0}))

    with pytest.raises(InvalidRequest, match="logit_bias"):
        tiny_llama.sampler(request, [1, 2], 2)


@needs_mlx
@pytest.mark.parametrize("asked", [{"structure": {"type": "json_schema", "schema": {"type": "object"}}},
                                   {"logprobs": 0}], ids=["structure", "logprobs"])
def test_it_refuses_what_it_cannot_honour_rather_than_ignore_it(tiny_llama, asked):
    with pytest.raises(InvalidRequest, match="choose llamacpp"):
        tiny_llama.sampler(GenerationRequest(prompt=PROMPT, **asked), [1, 2], 2)


# -- the KV cache --------------------------------------------------------------------------------------


@needs_mlx
def test_it_refuses_work_that_would_take_a_slot_past_its_context_and_changes_nothing(tiny_llama_dir):
    model = load(tiny_llama_dir, n_ctx=16, n_slots=1)
    prompt = model.tokenize("one two three four five")
    expected = decode(model, prompt, 4)
    sampler = model.sampler(GenerationRequest(prompt="", sampling=GREEDY), prompt, len(prompt))
    model.kv_trim(0, 0)
    model.decode([SlotWork(0, prompt[:-1], 0, False, sampler)])

    with pytest.raises(KVCacheFull, match="context of 16"):
        model.decode([SlotWork(0, prompt[-1:] + [1] * 16, len(prompt) - 1, True, sampler)])

    out = [model.decode([SlotWork(0, prompt[-1:], len(prompt) - 1, True, sampler)])[0].token]
    while len(out) < 4:
        out.append(model.decode([SlotWork(0, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    assert out == expected
    model.close()


@needs_mlx
def test_a_restored_copy_stays_as_it_was_saved_whatever_the_slot_does_next(tiny_llama):
    prompt = tiny_llama.tokenize("one two three four five six seven")
    assert len(prompt) - 1 > 2 + 3
    expected = decode(tiny_llama, prompt, 8)
    sampler = tiny_llama.sampler(GenerationRequest(prompt="", sampling=GREEDY), prompt, len(prompt))
    tiny_llama.kv_trim(0, 0)
    tiny_llama.decode([SlotWork(0, prompt[:-1], 0, False, sampler)])
    saved = tiny_llama.kv_save(0, len(prompt) - 1)

    tiny_llama.kv_restore(1, saved)
    tiny_llama.kv_trim(1, 2)  # the restored slot is written over, within the positions the saved copy holds
    tiny_llama.decode([SlotWork(1, [3, 4, 5], 2, False, sampler)])
    tiny_llama.kv_restore(2, saved)

    out = [tiny_llama.decode([SlotWork(2, prompt[-1:], len(prompt) - 1, True, sampler)])[0].token]
    while len(out) < 8:
        out.append(tiny_llama.decode([SlotWork(2, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    assert out == expected


@needs_mlx
def test_a_copied_prefix_is_the_targets_own_and_the_source_continues_as_before(tiny_llama):
    prompt = tiny_llama.tokenize("one two three four five six seven")
    expected = decode(tiny_llama, prompt, 8)
    sampler = tiny_llama.sampler(GenerationRequest(prompt="", sampling=GREEDY), prompt, len(prompt))
    tiny_llama.kv_trim(0, 0)
    tiny_llama.decode([SlotWork(0, prompt[:-1], 0, False, sampler)])

    tiny_llama.kv_copy(0, 1, len(prompt) - 1)
    tiny_llama.kv_trim(1, 2)  # the copy is written over, within the positions it shares with the source
    tiny_llama.decode([SlotWork(1, [3, 4, 5], 2, False, sampler)])

    out = [tiny_llama.decode([SlotWork(0, prompt[-1:], len(prompt) - 1, True, sampler)])[0].token]
    while len(out) < 8:
        out.append(tiny_llama.decode([SlotWork(0, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    assert out == expected


@needs_mlx
def test_its_memory_counts_the_kv_cache_every_slot_may_fill(tiny_llama_dir):
    # 2 layers x (keys + values) x 2 key-value heads x head_dim 16 x 4 bytes (fp32) = 512 bytes a position
    one, four = load(tiny_llama_dir, n_slots=1), load(tiny_llama_dir, n_slots=4)
    shared = load(tiny_llama_dir, n_slots=4, kv_tokens=300)

    assert one.kv_bytes_per_token == 512
    assert one.memory_bytes == one.weights_bytes + 256 * 512
    assert four.memory_bytes - one.memory_bytes == 3 * 256 * 512
    assert shared.kv_capacity == 300 and shared.memory_bytes == shared.weights_bytes + 300 * 512
    for model in (one, four, shared):
        model.close()


# -- conversion and safety ----------------------------------------------------------------------------


@needs_mlx
@pytest.mark.parametrize("bits", [4, 8])
def test_it_converts_to_n_bits_and_the_result_loads_and_generates(bits, tiny_llama_dir, tiny_llama, tmp_path):
    fractions = []

    converted = convert_hf_to_mlx(tiny_llama_dir, tmp_path / f"tiny-llama-{bits}bit", bits, fractions.append)

    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    config = json.loads((converted / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": bits, "mode": "affine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [converted.name]  # no staging directory left
    assert detect_format(str(converted)) == "mlx"

    model = load(converted, format="mlx")
    tokens = decode(model, model.tokenize(PROMPT), 8, sampling=no_eos(model), beside={1: ([5, 6, 7], 2, 8)})

    assert len(tokens) == 8 and all(0 <= t < model.vocab_size for t in tokens)
    assert model.weights_bytes < tiny_llama.weights_bytes * bits / 16
    model.close()


@needs_mlx
def test_it_refuses_to_convert_over_an_existing_directory(tiny_llama_dir, tmp_path):
    (tmp_path / "taken").mkdir()

    with pytest.raises(InvalidRequest, match="already exists"):
        convert_hf_to_mlx(tiny_llama_dir, tmp_path / "taken", 4, lambda fraction: None)


@needs_mlx
def test_it_refuses_a_model_that_asks_to_run_its_own_code(tiny_llama_dir, tmp_path):
    shutil.copytree(tiny_llama_dir, tmp_path / "custom")
    config = json.loads((tmp_path / "custom" / "config.json").read_text())
    (tmp_path / "custom" / "config.json").write_text(json.dumps({**config, "model_file": "evil.py"}))

    with pytest.raises(ModelRefused, match="evil.py"):
        load(tmp_path / "custom")
