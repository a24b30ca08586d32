"""The torch engine against transformers: same logits (1e-4, fp32) and the same greedy tokens."""

from __future__ import annotations

import json

import pytest
import torch

from inference.engine.base import ModelRefused
from inference.engine.sampling import SamplingParams
from inference.engine.torch.generate import decode_one_token, generate_batch, prefill
from inference.engine.torch.loader import load_hf_model
from inference.engine.torch.models import MODEL_TYPES, architecture_for
from inference.engine.torch.models.layers import ForwardStep, KVCache
from tests.unit.torch_models import PROMPT_IDS, STEPS, TINY_CONFIGS, build_tiny_model, greedy_margins

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request, tmp_path_factory):
    directory = build_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    return request.param, directory, reference


def new_cache(weights, batch: int = 1, length: int = 128) -> KVCache:
    args = weights.args
    return KVCache(args.n_layers, batch, args.n_kv_heads, length, args.head_dim, dtype=weights.dtype)


def test_prompt_logits_match_transformers_at_every_position(tiny):
    _, directory, reference = tiny
    weights = load_hf_model(directory, device="cpu", dtype="float32")
    ids = torch.tensor([PROMPT_IDS])
    with torch.inference_mode():
        ours = weights.model(ids, ForwardStep(torch.arange(len(PROMPT_IDS))[None]), new_cache(weights),
                             last_only=False)
        theirs = reference(ids).logits
    assert (ours - theirs).abs().max().item() < TOLERANCE


def test_greedy_decoding_matches_transformers_for_32_steps(tiny):
    _, directory, reference = tiny
    weights = load_hf_model(directory, device="cpu", dtype="float32")
    cache = new_cache(weights)
    expected_tokens, margin = greedy_margins(reference, PROMPT_IDS)
    assert margin > 1e-3
    ids = list(PROMPT_IDS)
    logits = prefill(weights.model, cache, ids)
    for step in range(STEPS):
        with torch.no_grad():
            theirs = reference(torch.tensor([ids])).logits[0, -1]
        assert (logits - theirs).abs().max().item() < TOLERANCE, f"step {step}"
        token = int(torch.argmax(logits))
        assert token == expected_tokens[step]
        ids.append(token)
        logits = decode_one_token(weights.model, cache, torch.tensor([token]), torch.tensor([len(ids) - 1]))[0]


def test_a_batch_at_different_positions_decodes_like_each_sequence_alone(tiny):
    _, directory, _ = tiny
    weights = load_hf_model(directory, device="cpu", dtype="float32")
    prompts = [PROMPT_IDS, PROMPT_IDS[:3], PROMPT_IDS[2:7]]
    greedy = SamplingParams(temperature=0)
    alone = [generate_batch(weights.model, new_cache(weights), [p], params=greedy, max_new_tokens=12)[0]
             for p in prompts]
    together = generate_batch(weights.model, new_cache(weights, batch=3), prompts, params=greedy, max_new_tokens=12)
    assert together == alone


def test_it_loads_a_sharded_checkpoint(tiny, tmp_path):
    name, _, reference = tiny
    reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    weights = load_hf_model(tmp_path, device="cpu", dtype="float32")
    ids = torch.tensor([PROMPT_IDS])
    with torch.inference_mode():
        ours = weights.model(ids, ForwardStep(torch.arange(len(PROMPT_IDS))[None]), new_cache(weights))
        theirs = reference(ids).logits[:, -1:]
    assert (ours - theirs).abs().max().item() < TOLERANCE


def test_bfloat16_on_cpu_stays_close_to_float32(tiny):
    _, directory, _ = tiny
    full = load_hf_model(directory, device="cpu", dtype="float32")
    half = load_hf_model(directory, device="cpu", dtype="bfloat16")
    assert half.model.embed.weight.dtype == torch.bfloat16
    a = prefill(full.model, new_cache(full), PROMPT_IDS)
    b = prefill(half.model, new_cache(half), PROMPT_IDS).float()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


def test_a_bf16_checkpoint_runs_in_bf16_on_cpu_by_default_and_others_in_fp32(tmp_path):
    from tests import factories

    stored_bf16 = factories.build_tiny_hf_dir(tmp_path / "bf16", dtype="bfloat16")
    stored_fp32 = factories.build_tiny_hf_dir(tmp_path / "fp32", dtype="float32")
    assert load_hf_model(stored_bf16, device="cpu").dtype == torch.bfloat16
    assert load_hf_model(stored_fp32, device="cpu").dtype == torch.float32
    assert load_hf_model(stored_bf16, device="cpu", dtype="float32").dtype == torch.float32


def test_it_refuses_an_unknown_model_type_and_names_the_supported_ones():
    with pytest.raises(ModelRefused) as error:
        architecture_for("gpt_bigcode")
    for model_type in MODEL_TYPES:
        assert model_type in error.value.message


def test_it_refuses_a_checkpoint_missing_a_tensor(tmp_path):
    directory = build_tiny_model(tmp_path / "m", "llama")
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelRefused, match="up_proj"):
        load_hf_model(directory, device="cpu")


def test_it_refuses_a_shard_index_pointing_outside_the_directory(tmp_path):
    directory = build_tiny_model(tmp_path / "m", "llama")
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "../../etc/passwd"}}))
    with pytest.raises(ModelRefused, match="unexpected shard"):
        load_hf_model(directory, device="cpu")
