"""The torch engine's decode shortcuts change nothing: fused projections, one prefill pass for prompts of
equal length, the batched greedy pick and the last-position logits give what the plain paths give."""

from __future__ import annotations

import pytest
import torch

from inference.engine.sampling import SamplingParams, make_generator, sample_next_token, sample_rows
from inference.engine.torch.generate import generate_batch
from inference.engine.torch.loader import load_hf_model
from inference.engine.torch.models.layers import Attention, ForwardStep, GatedMLP, KVCache, RMSNorm
from tests.unit.torch_models import PROMPT_IDS, build_tiny_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def weights(request, tmp_path_factory):
    directory = build_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    return load_hf_model(directory, device="cpu", dtype="float32")


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


def test_equal_length_prompts_prefilled_together_decode_like_each_alone(weights):
    prompts = [PROMPT_IDS, PROMPT_IDS[::-1], [5, 9, 13, 2, 77, 31, 8, 120]]
    greedy = SamplingParams(temperature=0)
    alone = [generate_batch(weights.model, new_cache(weights), [p], params=greedy, max_new_tokens=10)[0]
             for p in prompts]
    together = generate_batch(weights.model, new_cache(weights, batch=3), prompts, params=greedy, max_new_tokens=10)
    assert together == alone


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
