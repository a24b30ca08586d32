"""The torch engine against transformers: same logits (1e-4, fp32) and the same greedy tokens; and against
itself: sequences decoded together give the logits each gives alone (1e-4, fp32)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from inference.engine.base import ModelRefused, ModelSpec
from inference.engine.batch import SlotWork
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.generate import decode_one_token, prefill
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
        logits = decode_one_token(weights.model, cache, [token], [len(ids) - 1])[0]


@dataclass
class Run:
    """One sequence of the batched scenario: `tokens` (its prompt, then a fixed continuation fed in as if
    sampled) go into `slot` from step `joins` on, after the slot is trimmed to `keeps` positions."""

    slot: int
    tokens: list[int]
    n_prompt: int
    joins: int
    keeps: int = 0
    started: bool = False
    computed: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.computed == len(self.tokens)

    def next_work(self) -> SlotWork:
        stop = self.n_prompt if self.computed < self.n_prompt else self.computed + 1
        return SlotWork(self.slot, self.tokens[self.computed : stop], self.computed, True)


def run_together(model, runs: list[Run]) -> None:
    """Step by step, one `logits` call per step for every run that has joined and is not done."""
    step = 0
    while not all(run.done for run in runs):
        active = [run for run in runs if run.joins <= step and not run.done]
        for run in active:
            if not run.started:
                model.kv_trim(run.slot, run.keeps)
                run.started, run.computed = True, run.keeps
        work = [run.next_work() for run in active]
        for run, item, logits in zip(active, work, model.logits(work), strict=True):
            run.computed += len(item.tokens)
            run.logits.append(logits.clone())
        step += 1


def logits_alone(model, run: Run, slot: int) -> list[torch.Tensor]:
    """The same tokens as one sequence alone in an emptied slot: the prompt read whole, then one at a time."""
    model.kv_trim(slot, 0)
    alone = Run(slot, run.tokens, run.n_prompt, joins=0)
    while not alone.done:
        item = alone.next_work()
        alone.logits.append(model.logits([item])[0].clone())
        alone.computed += len(item.tokens)
    return alone.logits


def test_sequences_decoded_together_give_the_logits_each_gives_alone(tiny):
    _, directory, _ = tiny
    model = TorchBackend().load(ModelSpec(path=str(directory), format="hf-safetensors", n_ctx=96, n_slots=4,
                                          options={"device": "cpu", "dtype": "float32"}))
    draw = torch.Generator().manual_seed(0)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, 300, (n,), generator=draw).tolist()

    long_one = Run(slot=3, tokens=PROMPT_IDS + tokens(40), n_prompt=len(PROMPT_IDS), joins=0)  # past the windows
    finishes_early = Run(slot=0, tokens=tokens(27), n_prompt=21, joins=0)
    joins_later = Run(slot=2, tokens=tokens(9), n_prompt=5, joins=3)  # its prompt read beside decode steps
    # slot 0 again, emptied: positions 3.. still hold `finishes_early`'s keys, which it must never see
    reuses_a_slot = Run(slot=0, tokens=tokens(15), n_prompt=3, joins=8)
    # slot 2 again, keeping the 3 positions it shares with `joins_later`
    keeps_a_prefix = Run(slot=2, tokens=joins_later.tokens[:3] + tokens(16), n_prompt=6, joins=9, keeps=3)
    runs = [long_one, finishes_early, joins_later, reuses_a_slot, keeps_a_prefix]
    run_together(model, runs)
    for run in runs:
        alone = logits_alone(model, run, slot=1)
        assert len(run.logits) == len(alone) == len(run.tokens) - run.n_prompt + 1
        for step, (together, single) in enumerate(zip(run.logits, alone, strict=True)):
            assert (together - single).abs().max().item() < TOLERANCE, f"slot {run.slot}, step {step}"
    model.close()


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
    with pytest.raises(ModelRefused, match="invalid shard"):
        load_hf_model(directory, device="cpu")
