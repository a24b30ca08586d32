"""The torch engine's decode shortcuts change nothing: fused projections, one forward pass for the decode steps
of several slots and one for prompt chunks of equal length, the batched greedy pick and the last-position
logits give what the plain paths give."""

from __future__ import annotations

import pytest
import torch

from inference.engine.base import ModelSpec
from inference.engine.batch import SlotWork
from inference.engine.sampling import SamplingParams, make_generator, sample_next_token, sample_rows
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.loader import load_hf_model
from inference.engine.torch.models.layers import Attention, ForwardStep, GatedMLP, KVCache, RMSNorm
from inference.engine.torch.sampler import TorchSampler, sample_each
from tests.unit.torch_models import PROMPT_IDS, build_tiny_model

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def model_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def weights(model_dir):
    return load_hf_model(model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def batch_model(model_dir):
    model = TorchBackend().load(ModelSpec(path=str(model_dir), format="hf-safetensors", n_ctx=64, n_slots=4,
                                          options={"device": "cpu", "dtype": "float32"}))
    yield model
    model.close()


def forward_passes(model, work: list[SlotWork]) -> tuple[list[int], int]:
    """The tokens `model.decode(work)` samples, and how many forward passes it took."""
    passes = []
    hook = model.model.register_forward_hook(lambda *_: passes.append(1))
    try:
        return [s.token for s in model.decode(work)], len(passes)
    finally:
        hook.remove()


def greedy_alone(model, prompt: list[int], n: int) -> list[int]:
    model.kv_trim(0, 0)
    sampler = TorchSampler(GREEDY, prompt)
    out = [model.decode([SlotWork(0, prompt, 0, True, sampler)])[0].token]
    while len(out) < n:
        out.append(model.decode([SlotWork(0, out[-1:], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    return out


def new_cache(weights, batch: int = 1, length: int = 64) -> KVCache:
    a = weights.args
    return KVCache(a.n_layers, batch, a.n_kv_heads, length, a.head_dim, dtype=weights.dtype)


def prompt_logits(weights, *, last_only: bool) -> torch.Tensor:
    ids = torch.tensor([PROMPT_IDS, PROMPT_IDS[::-1]])  # (2, T)
    positions = torch.arange(len(PROMPT_IDS))[None].expand(2, -1)
    with torch.inference_mode():
        return weights.model(ids, ForwardStep(positions), new_cache(weights, batch=2), last_only=last_only)


def test_fused_projections_are_views_of_one_weight(weights):
    attn, mlp = weights.model.layers[0].attn, weights.model.layers[0].mlp
    assert attn.qkv_weight is not None and mlp.gate_up_weight is not None
    assert attn.q.weight.data_ptr() == attn.qkv_weight.data_ptr()
    assert attn.k.weight.data_ptr() == attn.qkv_weight[attn.q.out_features:].data_ptr()
    assert mlp.up.weight.data_ptr() == mlp.gate_up_weight[mlp.gate.out_features:].data_ptr()


def test_fused_and_unfused_forward_passes_agree(weights):
    fused = prompt_logits(weights, last_only=False)
    saved = {}
    for module in weights.model.modules():
        for name in ("qkv_weight", "gate_up_weight", "scale"):
            if isinstance(module, (Attention, GatedMLP, RMSNorm)) and getattr(module, name, None) is not None:
                saved[module, name] = getattr(module, name)
                setattr(module, name, None)
    assert saved
    try:
        plain = prompt_logits(weights, last_only=False)
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
    assert (fused - plain).abs().max().item() < 1e-5


def test_last_only_logits_are_the_last_row_of_all_logits(weights):
    every = prompt_logits(weights, last_only=False)  # (2, T, V)
    last = prompt_logits(weights, last_only=True)  # (2, 1, V)
    assert last.shape == (2, 1, every.shape[-1])
    assert (last - every[:, -1:]).abs().max().item() < 1e-5


def test_equal_length_prompts_share_one_pass_and_decode_steps_another(batch_model):
    prompts = [PROMPT_IDS, PROMPT_IDS[::-1], [5, 9, 13, 2, 77, 31, 8, 120]]
    alone = [greedy_alone(batch_model, p, 10) for p in prompts]
    samplers = [TorchSampler(GREEDY, p) for p in prompts]
    for slot in (1, 2, 3):
        batch_model.kv_trim(slot, 0)
    outputs, passes = forward_passes(batch_model, [SlotWork(slot, p, 0, True, sampler) for slot, p, sampler
                                                   in zip((3, 1, 2), prompts, samplers, strict=True)])
    assert passes == 1
    outputs = [[token] for token in outputs]
    while len(outputs[0]) < 10:
        work = [SlotWork(slot, out[-1:], len(p) + len(out) - 1, True, sampler) for slot, p, out, sampler
                in zip((3, 1, 2), prompts, outputs, samplers, strict=True)]
        tokens, passes = forward_passes(batch_model, work)
        assert passes == 1
        for out, token in zip(outputs, tokens, strict=True):
            out.append(token)
    assert outputs == alone


def test_a_decode_with_steps_and_prompt_chunks_of_two_lengths_takes_three_passes(batch_model):
    for slot in range(4):
        batch_model.kv_trim(slot, 0)
    batch_model.decode([SlotWork(0, PROMPT_IDS, 0, False), SlotWork(1, PROMPT_IDS[:5], 0, False)])
    work = [SlotWork(0, [3], len(PROMPT_IDS), False), SlotWork(1, [4], 5, False),
            SlotWork(2, PROMPT_IDS[:4], 0, False), SlotWork(3, PROMPT_IDS[:6], 0, False)]
    assert forward_passes(batch_model, work)[1] == 3


def test_the_batched_greedy_pick_is_what_each_sampler_picks_alone():
    torch.manual_seed(0)
    logits = list(torch.randn(5, 50).to(torch.bfloat16))  # five rows (V,)
    params = [GREEDY, SamplingParams(temperature=0, repeat_penalty=1.5), GREEDY,
              SamplingParams(temperature=0.8, top_k=5, seed=3), SamplingParams(temperature=0, logit_bias={3: 4.0})]
    histories = [[1, 2, 3], [4, 4], [7], [3, 9, 9, 9], [2]]

    def samplers():
        return [TorchSampler(p, h) for p, h in zip(params, histories, strict=True)]

    one_by_one = [sampler.pick(row) for sampler, row in zip(samplers(), logits, strict=True)]
    together = samplers()
    assert [s.plain_greedy for s in together] == [True, False, True, False, False]
    assert sample_each(logits, together) == one_by_one
    assert [s.history[-1] for s in together] == one_by_one  # each keeps its token for its penalties


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0, repeat_penalty=1.5),
    SamplingParams(temperature=0, logit_bias={3: 4.0}),
    SamplingParams(temperature=0.8, top_k=5),
])
def test_sampling_rows_at_once_picks_what_row_by_row_picks(params):
    torch.manual_seed(0)
    logits = torch.randn(4, 50).to(torch.bfloat16)
    histories = [[1, 2, 3], [4, 4], [7], [3, 9, 9, 9]]
    generator = make_generator(7)
    one_by_one = [sample_next_token(row, params, h, generator) for row, h in zip(logits, histories, strict=True)]
    assert sample_rows(logits, params, histories, make_generator(7)) == one_by_one


def test_the_cuda_decode_attention_equals_the_sdpa_one():
    from inference.engine.torch.models.layers import _attend_matmul

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 4, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)  # (B, Hkv, G|L, D)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False  # the second sequence sees only its first 6 keys
    for m in (None, mask):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.25)
        assert (_attend_matmul(q, k, v, m, 0.25) - expected).abs().max().item() < 1e-5
