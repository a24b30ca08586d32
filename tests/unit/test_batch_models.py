"""The BatchModel contract (inference/engine/batch.py), the same for every backend, on tiny real models.

Each backend loads a tiny model with four slots; the tests drive `decode` and the slot operations directly, the
way the scheduler does, and compare batched runs with one-at-a-time runs of the same model.
"""

from __future__ import annotations

import pytest

from inference.engine.base import GenerationRequest, ModelSpec
from inference.engine.batch import KVCacheFull, SlotWork
from inference.engine.sampling import SamplingParams
from tests.factories import CHATML, build_tiny_gguf

GREEDY = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0))
PROMPTS = ["The quick brown fox", "Hearth serves a team", "one two three four five six", "a"]
SLOTS = 4
N_CTX = 256


def spec_for(backend: str, path, **overrides) -> ModelSpec:
    formats = {"llamacpp": "gguf", "torch": "hf-safetensors", "mlx": "hf-safetensors"}
    fields = dict(path=str(path), format=formats[backend], n_ctx=N_CTX, n_threads=1, n_slots=SLOTS,
                  chat_template=CHATML)
    fields.update(overrides)
    return ModelSpec(**fields)


def load(backend: str, path, **overrides):
    from inference.engine.registry import backend_for

    return backend_for(backend).load(spec_for(backend, path, **overrides))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from tests.factories import build_tiny_hf_dir

    folder = tmp_path_factory.mktemp("batch")
    return {"gguf": build_tiny_gguf(folder / "tiny.gguf", chat_template=CHATML, context_length=N_CTX),
            "hf": build_tiny_hf_dir(folder / "tiny-hf", context_length=N_CTX)}


BACKENDS = ["llamacpp", "torch", "mlx"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def model(backend, model_files):
    loaded = load(backend, model_files["gguf" if backend == "llamacpp" else "hf"])
    yield loaded
    loaded.close()


def tokens_of(model, text: str) -> list[int]:
    return model.tokenize(text)


def generate_alone(model, prompt: list[int], n: int, *, slot: int = 0, request=GREEDY) -> list[int]:
    """n tokens for one sequence in `slot`, the slot emptied first."""
    model.kv_trim(slot, 0)
    sampler = model.sampler(request, prompt, len(prompt))
    try:
        out = [model.decode([SlotWork(slot, list(prompt), 0, True, sampler)])[0].token]
        while len(out) < n:
            start = len(prompt) + len(out) - 1
            out.append(model.decode([SlotWork(slot, [out[-1]], start, True, sampler)])[0].token)
        return out
    finally:
        sampler.close()


def generate_together(model, prompts: list[list[int]], n: int, *, request=GREEDY, stagger: bool = True
                      ) -> list[list[int]]:
    """n tokens for each prompt, in slots 0.., decoded together; with `stagger`, sequence i joins at step i (its
    prompt read in the same batch as the others' decode steps)."""
    for slot in range(len(prompts)):
        model.kv_trim(slot, 0)
    samplers = [model.sampler(request, p, len(p)) for p in prompts]
    outputs: list[list[int]] = [[] for _ in prompts]
    try:
        step = 0
        while any(len(o) < n for o in outputs):
            work = []
            for i, prompt in enumerate(prompts):
                if stagger and i > step or len(outputs[i]) >= n:
                    continue
                if not outputs[i]:
                    work.append(SlotWork(i, list(prompt), 0, True, samplers[i]))
                else:
                    work.append(SlotWork(i, [outputs[i][-1]], len(prompt) + len(outputs[i]) - 1, True,
                                         samplers[i]))
            for sampled in model.decode(work):
                outputs[sampled.slot].append(sampled.token)
            step += 1
        return outputs
    finally:
        for sampler in samplers:
            sampler.close()


def test_it_declares_its_slots_and_context(model):
    assert model.n_slots == SLOTS
    assert model.n_ctx == N_CTX
    assert model.kv_capacity >= N_CTX
    assert model.eog_ids and all(isinstance(t, int) for t in model.eog_ids)
    assert model.memory_bytes > 0


def test_it_decodes_sequences_together_exactly_as_one_at_a_time(model):
    prompts = [tokens_of(model, p) for p in PROMPTS]
    alone = [generate_alone(model, p, 12) for p in prompts]
    together = generate_together(model, prompts, 12)
    assert together == alone


def test_a_sequence_gives_the_same_tokens_in_any_slot(model):
    prompt = tokens_of(model, PROMPTS[0])
    assert generate_alone(model, prompt, 10, slot=3) == generate_alone(model, prompt, 10, slot=0)


def test_it_returns_samples_in_the_order_of_the_work_and_only_where_asked(model):
    prompts = [tokens_of(model, p) for p in PROMPTS[:3]]
    samplers = [model.sampler(GREEDY, p, len(p)) for p in prompts]
    for slot in range(3):
        model.kv_trim(slot, 0)
    work = [SlotWork(2, prompts[2], 0, True, samplers[2]),
            SlotWork(0, prompts[0][:-1], 0, False, samplers[0]),
            SlotWork(1, prompts[1], 0, True, samplers[1])]
    sampled = model.decode(work)
    assert [s.slot for s in sampled] == [2, 1]
    for sampler in samplers:
        sampler.close()


def test_a_prompt_read_in_chunks_continues_like_one_read_whole(model):
    prompt = tokens_of(model, "one two three four five six seven eight nine ten")
    whole = generate_alone(model, prompt, 8)
    model.kv_trim(0, 0)
    sampler = model.sampler(GREEDY, prompt, len(prompt))
    model.decode([SlotWork(0, prompt[:5], 0, False, sampler)])
    model.decode([SlotWork(0, prompt[5:9], 5, False, sampler)])
    out = [model.decode([SlotWork(0, prompt[9:], 9, True, sampler)])[0].token]
    while len(out) < 8:
        out.append(model.decode([SlotWork(0, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    sampler.close()
    assert out == whole


def test_trimming_a_slot_reuses_its_prefix(model):
    shared = tokens_of(model, "Hearth serves a team and")
    first, second = shared + tokens_of(model, " one")[1:], shared + tokens_of(model, " three")[1:]
    fresh = generate_alone(model, second, 8)
    generate_alone(model, first, 8)  # the slot now holds `first` and its output
    model.kv_trim(0, len(shared))
    sampler = model.sampler(GREEDY, second, len(second))
    out = [model.decode([SlotWork(0, second[len(shared):], len(shared), True, sampler)])[0].token]
    while len(out) < 8:
        out.append(model.decode([SlotWork(0, [out[-1]], len(second) + len(out) - 1, True, sampler)])[0].token)
    sampler.close()
    assert out == fresh


def test_a_copied_prefix_continues_like_the_original(model):
    prompt = tokens_of(model, PROMPTS[1])
    expected = generate_alone(model, prompt, 8, slot=1)
    model.kv_trim(1, 0)
    sampler = model.sampler(GREEDY, prompt, len(prompt))
    model.decode([SlotWork(1, prompt[:-1], 0, False, sampler)])
    model.kv_copy(1, 2, len(prompt) - 1)
    out = [model.decode([SlotWork(2, prompt[-1:], len(prompt) - 1, True, sampler)])[0].token]
    while len(out) < 8:
        out.append(model.decode([SlotWork(2, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    sampler.close()
    assert out == expected


def test_a_slot_saved_to_host_memory_restores_into_another_slot(model):
    prompt = tokens_of(model, PROMPTS[2])
    expected = generate_alone(model, prompt, 8)
    model.kv_trim(0, 0)
    sampler = model.sampler(GREEDY, prompt, len(prompt))
    model.decode([SlotWork(0, prompt[:-1], 0, False, sampler)])
    saved = model.kv_save(0, len(prompt) - 1)
    assert saved.n_tokens == len(prompt) - 1 and saved.nbytes > 0
    model.kv_trim(0, 0)
    generate_alone(model, tokens_of(model, PROMPTS[0]), 4, slot=3)  # something else runs meanwhile
    model.kv_restore(3, saved)
    out = [model.decode([SlotWork(3, prompt[-1:], len(prompt) - 1, True, sampler)])[0].token]
    while len(out) < 8:
        out.append(model.decode([SlotWork(3, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    sampler.close()
    assert out == expected


def test_a_seed_gives_the_same_tokens_alone_or_in_a_batch(model):
    request = GenerationRequest(prompt="", sampling=SamplingParams(temperature=1.0, seed=7))
    prompts = [tokens_of(model, p) for p in PROMPTS[:2]]
    alone = generate_alone(model, prompts[0], 10, request=request)
    assert generate_alone(model, prompts[0], 10, request=request) == alone
    together = generate_together(model, prompts, 10, request=request)
    assert together[0] == alone


def test_a_banned_token_is_never_sampled(model):
    prompt = tokens_of(model, PROMPTS[0])
    greedy = generate_alone(model, prompt, 6)
    banned = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0, logit_bias={greedy[0]: -100}))
    assert generate_alone(model, prompt, 6, request=banned)[0] != greedy[0]


def test_top_k_one_is_greedy_whatever_the_temperature(model):
    prompt = tokens_of(model, PROMPTS[1])
    request = GenerationRequest(prompt="", sampling=SamplingParams(temperature=1.5, top_k=1, seed=3))
    assert generate_alone(model, prompt, 8, request=request) == generate_alone(model, prompt, 8)


def test_the_history_a_sampler_starts_with_is_what_the_penalties_see(model):
    prompt = tokens_of(model, PROMPTS[0])
    greedy = generate_alone(model, prompt, 1)
    penalized = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0, repeat_penalty=1.0,
                                                                     presence_penalty=50.0))
    history = prompt + greedy  # as if the first token had already been sent: it may not come again
    model.kv_trim(0, 0)
    sampler = model.sampler(penalized, history, len(prompt))
    token = model.decode([SlotWork(0, history, 0, True, sampler)])[0].token
    sampler.close()
    assert token not in history


def test_it_refuses_a_batch_that_does_not_fit_the_kv_cache_and_changes_nothing(backend, model_files):
    """A shared pool (torch, MLX) runs out when the slots together outgrow it; llama.cpp's slots each have a
    context of their own, which one slot can outgrow."""
    streams = backend == "llamacpp"
    small = load(backend, model_files["gguf" if streams else "hf"], n_slots=2, n_ctx=64,
                 kv_tokens=128 if streams else 64)
    try:
        a, b = small.tokenize("one two three " * 6), small.tokenize("four five six " * (8 if streams else 6))
        assert len(b) > small.n_ctx if streams else len(a) + len(b) > small.kv_capacity
        expected = generate_alone(small, a, 4)
        sa, sb = small.sampler(GREEDY, a, len(a)), small.sampler(GREEDY, b, len(b))
        small.kv_trim(0, 0)
        small.decode([SlotWork(0, a, 0, False, sa)])
        with pytest.raises(KVCacheFull):
            small.decode([SlotWork(1, b, 0, True, sb)])
        small.kv_trim(0, len(a) - 1)
        out = [small.decode([SlotWork(0, [a[-1]], len(a) - 1, True, sa)])[0].token]
        while len(out) < 4:
            out.append(small.decode([SlotWork(0, [out[-1]], len(a) + len(out) - 1, True, sa)])[0].token)
        assert out == expected
        sa.close()
        sb.close()
    finally:
        small.close()


def test_log_probabilities_come_with_the_sample_when_asked(backend, model):
    if backend != "llamacpp":
        pytest.skip("log probabilities are llama.cpp's (its declared capability)")
    request = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0), logprobs=3)
    prompt = tokens_of(model, PROMPTS[0])
    model.kv_trim(0, 0)
    sampler = model.sampler(request, prompt, len(prompt))
    sampled = model.decode([SlotWork(0, prompt, 0, True, sampler)])[0]
    sampler.close()
    entry = sampled.logprobs
    assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
    assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]
    assert isinstance(entry["bytes"], list) and isinstance(entry["token"], str)
