"""The llama.cpp backend on tiny real GGUF models: loading, prompts and tokens, the slots' KV cache (sliding
windows included), and requests run end to end through the scheduler and the output processor.

The contract every backend shares (batched = one at a time, trim, copy, save, seeds, bans) is in
test_batch_models.py; grammars and log probabilities in test_grammar.py."""

from __future__ import annotations

import pytest

from inference.engine.base import BackendUnavailable, GenerationRequest, ModelSpec
from inference.engine.batch import KVCacheFull, SlotWork
from inference.engine.llamacpp import LlamaCppBackend
from inference.engine.sampling import SamplingParams
from inference.engine.scheduler import Scheduler
from tests.factories import (
    CHATML,
    TINY_GGUF_BOS_ID,
    TINY_GGUF_EOS_ID,
    TINY_GGUF_IM_END_ID,
    TINY_GGUF_IM_START_ID,
    build_tiny_gguf,
)
from tests.unit.batch_runs import run_one, run_requests

GREEDY = SamplingParams(temperature=0)
NEVER_END = SamplingParams(temperature=0, logit_bias={TINY_GGUF_EOS_ID: -100, TINY_GGUF_IM_END_ID: -100})


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("llamacpp") / "tiny.gguf", chat_template=CHATML,
                           context_length=256)


def load(path, **overrides):
    spec = dict(path=str(path), format="gguf", architecture="llama", n_ctx=256, n_threads=1, n_slots=4,
                chat_template=CHATML)
    spec.update(overrides)
    return LlamaCppBackend().load(ModelSpec(**spec))


@pytest.fixture(scope="module")
def model(gguf_path):
    loaded = load(gguf_path)
    yield loaded
    loaded.close()


def greedy_tokens(model, prompt: list[int], n: int, slot: int = 0, sampler=None) -> list[int]:
    request = GenerationRequest(prompt="", sampling=NEVER_END)
    model.kv_trim(slot, 0)
    sampler = sampler or model.sampler(request, prompt, len(prompt))
    out = [model.decode([SlotWork(slot, prompt, 0, True, sampler)])[0].token]
    while len(out) < n:
        out.append(model.decode([SlotWork(slot, [out[-1]], len(prompt) + len(out) - 1, True, sampler)])[0].token)
    sampler.close()
    return out


# -- loading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "llama_cpp_sees"), [(0, 0), (7, 7), (-1, 2**31 - 1)])  # -1: every layer
def test_it_passes_the_number_of_gpu_layers_to_llama_cpp(gguf_path, layers, llama_cpp_sees):
    loaded = load(gguf_path, n_gpu_layers=layers)
    try:
        assert loaded.model_params.n_gpu_layers == llama_cpp_sees
    finally:
        loaded.close()


def test_it_makes_one_context_with_a_kv_stream_of_its_own_for_each_slot(model):
    params = model.context_params
    assert (model.n_slots, model.n_ctx, model.kv_capacity) == (4, 256, 4 * 256)
    assert not params.kv_unified and params.n_seq_max == model.n_slots and params.n_ctx == 4 * 256
    assert params.n_batch >= model.kv_capacity  # any batch that fits the cache is one llama_decode
    assert params.n_ubatch == 512 + model.n_slots  # a prompt chunk and one token per slot
    assert params.n_threads == params.n_threads_batch == 1


def test_kv_tokens_is_cut_into_equal_contexts_one_per_slot(gguf_path):
    loaded = load(gguf_path, kv_tokens=300)  # 4 slots
    try:
        assert loaded.kv_capacity == 300 and loaded.n_ctx == 75
    finally:
        loaded.close()


def test_a_context_longer_than_the_model_was_trained_for_is_cut_to_it(gguf_path):
    loaded = load(gguf_path, n_ctx=4096, n_slots=2)
    try:
        assert loaded.n_ctx == 256 and loaded.kv_capacity == 512
    finally:
        loaded.close()


def test_the_f32_kv_cache_option_reaches_llama_cpp_and_the_memory_estimate(gguf_path, model):
    loaded = load(gguf_path, options={"f32_kv_cache": True})
    try:
        assert loaded.context_params.type_k == loaded.context_params.type_v == 0  # GGML_TYPE_F32
        assert loaded.memory_bytes > model.memory_bytes
    finally:
        loaded.close()


def test_it_counts_weights_and_kv_cache_in_its_memory(gguf_path, model):
    one_slot = load(gguf_path, n_slots=1)
    try:
        assert model.memory_bytes > one_slot.memory_bytes > gguf_path.stat().st_size
    finally:
        one_slot.close()


def test_a_file_llama_cpp_cannot_load_is_reported_with_what_to_do(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(BackendUnavailable, match=r"could not load broken\.gguf .*smaller quantization"):
        load(broken)


def test_it_runs_only_gguf_files(gguf_path):
    with pytest.raises(BackendUnavailable, match="Convert it to GGUF"):
        load(gguf_path, format="hf-safetensors")


def test_closing_twice_is_safe_and_closes_the_samplers_still_open(gguf_path):
    loaded = load(gguf_path)
    sampler = loaded.sampler(GenerationRequest(prompt="", sampling=GREEDY), [1], 1)
    loaded.close()
    assert sampler.chain == 0
    loaded.close()
    sampler.close()


def test_a_broken_llama_cpp_install_is_reported_unavailable_not_raised(tmp_path):
    import subprocess
    import sys

    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text("def broken(:\n")
    code = "from inference.engine.llamacpp import LlamaCppBackend; print(LlamaCppBackend().unavailable_reason())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": f"{tmp_path}:.", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "fails to import (SyntaxError" in result.stdout


# -- text and tokens -----------------------------------------------------------------------------------------


def test_it_parses_special_tokens_and_adds_exactly_one_bos(model):
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}])
    assert model.render_prompt(request).startswith("<|im_start|>user\nhi<|im_end|>")
    tokens = model.tokenize(model.render_prompt(request))
    assert tokens[:2] == [TINY_GGUF_BOS_ID, TINY_GGUF_IM_START_ID]
    assert tokens.count(TINY_GGUF_BOS_ID) == 1


def test_it_adds_no_second_bos_when_the_template_writes_one(gguf_path):
    loaded = load(gguf_path, chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    try:
        text = loaded.render_prompt(GenerationRequest(messages=[{"role": "user", "content": "hi"}]))
        tokens = loaded.tokenize(text)
        assert tokens.count(TINY_GGUF_BOS_ID) == 1 and tokens[0] == TINY_GGUF_BOS_ID
    finally:
        loaded.close()


def test_a_raw_prompt_is_the_text_the_model_sees(model):
    assert model.render_prompt(GenerationRequest(prompt="once upon")) == "once upon"


def test_detokenizing_gives_the_text_back_with_its_spaces(model):
    text = "hello world, the answer is 42! ünïcödé"
    ids = model.tokenize(text)[1:]  # without BOS
    assert model.detokenize(ids).strip() == text
    assert model.detokenize(ids[1:]).startswith(" ")  # a word's leading space stays (streamed text needs it)


def test_half_a_character_detokenizes_as_a_replacement_character(model):
    ids = model.tokenize("ü")[1:]
    assert model.detokenize(ids).strip() == "ü"
    assert model.detokenize(ids[:-1]).endswith("\ufffd")


def test_its_end_of_generation_tokens_include_eos_and_the_chatml_end(model):
    assert {TINY_GGUF_EOS_ID, TINY_GGUF_IM_END_ID} <= model.eog_ids
    assert TINY_GGUF_BOS_ID not in model.eog_ids


# -- decoding and the KV cache ---------------------------------------------------------------------------------


def test_a_batch_bigger_than_a_physical_batch_is_one_decode(gguf_path):
    big = load(gguf_path, n_ctx=256, n_slots=8)  # n_ubatch 520; the batch below is 8 x 120 = 960 tokens
    try:
        prompts = [big.tokenize(f"{word} the and you that was for " * 14)[:120] for word in
                   ("one", "two", "three", "four", "five", "six", "seven", "eight")]
        alone = [greedy_tokens(big, p, 4) for p in prompts]
        samplers = [big.sampler(GenerationRequest(prompt="", sampling=NEVER_END), p, len(p)) for p in prompts]
        for slot in range(8):
            big.kv_trim(slot, 0)
        first = big.decode([SlotWork(i, p, 0, True, samplers[i]) for i, p in enumerate(prompts)])
        assert [s.token for s in first] == [a[0] for a in alone]
    finally:
        big.close()


def test_it_refuses_an_item_that_does_not_continue_its_slot(model):
    prompt = model.tokenize("the and")
    sampler = model.sampler(GenerationRequest(prompt="", sampling=GREEDY), prompt, len(prompt))
    model.kv_trim(0, 0)
    with pytest.raises(ValueError, match="holds 0 positions"):
        model.decode([SlotWork(0, prompt, 3, True, sampler)])
    sampler.close()


def test_a_full_context_is_refused_before_the_batch_and_leaves_every_slot_as_it_was(gguf_path):
    small = load(gguf_path, n_slots=2, n_ctx=64)
    try:
        a = small.tokenize("the and you that was " * 8)[:40]
        b = small.tokenize("for are with his they " * 16)[:70]
        assert len(b) == 70
        expected = greedy_tokens(small, a, 3)
        small.kv_trim(0, 0)
        sampler = small.sampler(GenerationRequest(prompt="", sampling=NEVER_END), a, len(a))
        small.decode([SlotWork(0, a[:-1], 0, False, sampler)])
        with pytest.raises(KVCacheFull):
            small.decode([SlotWork(0, a[-1:], len(a) - 1, True, sampler), SlotWork(1, b, 0, True, sampler)])
        out = [small.decode([SlotWork(0, a[-1:], len(a) - 1, True, sampler)])[0].token]
        while len(out) < 3:
            out.append(small.decode([SlotWork(0, [out[-1]], len(a) + len(out) - 1, True, sampler)])[0].token)
        sampler.close()
        assert out == expected
    finally:
        small.close()


def test_a_copied_prefix_continues_as_the_source_would_in_a_context_of_its_own(gguf_path):
    small = load(gguf_path, n_slots=3, n_ctx=64)
    try:
        prompt = small.tokenize("the and you that was " * 8)[:40]
        expected = greedy_tokens(small, prompt[:30], 3, slot=2)
        sampler = small.sampler(GenerationRequest(prompt="", sampling=NEVER_END), prompt, len(prompt))
        small.kv_trim(0, 0)
        small.decode([SlotWork(0, prompt, 0, False, sampler)])
        assert small.kv_copy(0, 1, 40) == 40 and small.kv_copy(0, 2, 29) == 29
        small.decode([SlotWork(1, prompt[:20], 40, False, sampler)])  # 60 of slot 1's own 64 cells
        out = [small.decode([SlotWork(2, prompt[29:30], 29, True, sampler)])[0].token]
        while len(out) < 3:
            out.append(small.decode([SlotWork(2, [out[-1]], 29 + len(out), True, sampler)])[0].token)
        sampler.close()
        assert out == expected
    finally:
        small.close()


def test_trimming_never_keeps_more_than_the_slot_holds(model):
    prompt = model.tokenize("the and you")
    greedy_tokens(model, prompt, 2)
    assert model.kv_trim(0, 100) == len(prompt) + 1
    assert model.kv_trim(0, 2) == 2
    assert model.kv_trim(0, 0) == 0


def test_a_saved_slot_restores_cut_to_what_was_saved_and_continues_as_a_fresh_one(gguf_path):
    small = load(gguf_path, n_slots=2, n_ctx=64)
    try:
        prompt = small.tokenize("the and you that was " * 8)[:40]
        expected = greedy_tokens(small, prompt[:30], 3, slot=1)
        greedy_tokens(small, prompt, 2, slot=0)
        saved = small.kv_save(0, 30)
        assert saved.n_tokens == 30
        small.kv_trim(0, 0)
        assert small.kv_restore(1, saved) == 30 and small.kv_trim(1, 100) == 30
        assert small.kv_trim(1, 29) == 29  # the last prompt token is read again, for its logits
        sampler = small.sampler(GenerationRequest(prompt="", sampling=NEVER_END), prompt[:30], 30)
        out = [small.decode([SlotWork(1, prompt[29:30], 29, True, sampler)])[0].token]
        while len(out) < 3:
            out.append(small.decode([SlotWork(1, [out[-1]], 29 + len(out), True, sampler)])[0].token)
        sampler.close()
        assert out == expected
    finally:
        small.close()


def test_a_slot_whose_copy_llama_cpp_has_not_applied_yet_is_not_saved(model):
    prompt = model.tokenize("the and you that was " * 8)[:40]
    greedy_tokens(model, prompt, 1)
    assert model.kv_copy(0, 1, 40) == 40
    assert model.kv_save(1, 40).n_tokens == 0  # the copy is applied at the next decode
    assert model.kv_save(0, 40).n_tokens == 40


# -- sliding-window attention (Gemma 3) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def swa_model(tmp_path_factory):
    path = build_tiny_gguf(tmp_path_factory.mktemp("swa") / "tiny-gemma3.gguf", arch="gemma3",
                           context_length=512)  # a sliding window of 256
    loaded = load(path, architecture="gemma3", n_ctx=512, n_slots=2)
    yield loaded
    loaded.close()


def test_a_sliding_window_slot_cut_where_its_window_is_kept_holds_the_cut(swa_model):
    prompt = swa_model.tokenize("the and you that was for are " * 60)[:300]
    expected = greedy_tokens(swa_model, prompt[:200], 4)
    greedy_tokens(swa_model, prompt, 1)  # slot 0 holds 300 positions, every one still in the cache
    assert swa_model.kv_trim(0, 199) == 199
    sampler = swa_model.sampler(GenerationRequest(prompt="", sampling=NEVER_END), prompt[:200], 200)
    out = [swa_model.decode([SlotWork(0, prompt[199:200], 199, True, sampler)])[0].token]
    while len(out) < 4:
        out.append(swa_model.decode([SlotWork(0, [out[-1]], 199 + len(out), True, sampler)])[0].token)
    sampler.close()
    assert out == expected


def test_a_sliding_window_slot_cut_back_past_its_window_is_emptied_and_says_so(swa_model):
    prompt = swa_model.tokenize("the and you that was for are " * 60)[:300]
    greedy_tokens(swa_model, prompt, 1)  # slot 0 holds the 300 positions of the prompt
    saved = swa_model.kv_save(0, 300)  # the sliding-window layers save only the last 256 positions
    assert swa_model.kv_restore(1, saved) == 300  # enough to go on from position 300
    assert swa_model.kv_trim(1, 200) == 0  # not to go back to 200: the slot is emptied for a recompute
    assert swa_model.kv_save(0, 200).n_tokens == 200  # a cut of slot 0 (whose cache is whole) is usable


# -- requests end to end (scheduler + output processor) ------------------------------------------------------


def test_a_plain_greedy_sequence_picks_exactly_what_llama_cpps_greedy_sampler_picks(model):
    greedy = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0))
    prompt = model.tokenize("the cat sat on the")
    argmax = model.sampler(greedy, prompt, len(prompt))
    chain = model.sampler(greedy, prompt, len(prompt))
    chain.greedy = False  # through llama_sampler_sample, as any other chain
    assert argmax.greedy
    assert greedy_tokens(model, prompt, 24, sampler=argmax) == greedy_tokens(model, prompt, 24, sampler=chain)


@pytest.mark.parametrize("sampling", [NEVER_END, SamplingParams(temperature=0, repeat_penalty=1.3),
                                      SamplingParams(temperature=0.7)], ids=["logit bias", "penalty", "temperature"])
def test_a_chain_with_more_than_greedy_in_it_is_run_by_llama_cpp(model, sampling):
    prompt = model.tokenize("the cat")
    assert not model.sampler(GenerationRequest(prompt="", sampling=sampling), prompt, len(prompt)).greedy


def test_it_streams_a_reply_until_the_token_budget(model):
    run = run_one(model, GenerationRequest(prompt="the", sampling=NEVER_END, max_tokens=8))
    assert run.events[0]["kind"] == "started" and run.events[0]["prompt_tokens"] == 2
    assert (run.finish_reason, run.done["completion_tokens"]) == ("length", 8)
    assert run.text == model.detokenize(run.ids)


def test_an_end_of_generation_token_ends_the_reply_with_stop(model):
    ends_at_once = SamplingParams(temperature=0, logit_bias={TINY_GGUF_EOS_ID: 100})
    run = run_one(model, GenerationRequest(prompt="the", sampling=ends_at_once, max_tokens=8))
    assert (run.finish_reason, run.done["completion_tokens"], run.text) == ("stop", 0, "")


def test_more_requests_than_slots_give_what_each_gives_alone(model):
    prompts = ["the and", "you that was", "for are with", "his they", "one had word", "but not what"]
    requests = [GenerationRequest(prompt=p, sampling=NEVER_END, max_tokens=10) for p in prompts]
    alone = [run_one(model, r).text for r in requests]
    together = run_requests(model, requests)
    assert [r.text for r in together] == alone
    assert all(r.finish_reason == "length" for r in together)


def test_a_conversation_continued_from_the_cache_replies_as_a_fresh_model_does(gguf_path):
    first = [{"role": "user", "content": "the and you that was for are with his they " * 3}]
    second = [*first, {"role": "assistant", "content": "this have from"}, {"role": "user", "content": "one had"}]
    requests = [GenerationRequest(messages=m, sampling=NEVER_END, max_tokens=12) for m in (first, second)]
    fresh = load(gguf_path, n_slots=1)
    cached = load(gguf_path, n_slots=1)
    try:
        expected = run_one(fresh, requests[1]).text
        scheduler = Scheduler(cached, cache_bytes=1 << 26)
        run_one(cached, requests[0], scheduler=scheduler)
        run_one(cached, GenerationRequest(prompt="but not what all were when " * 6, sampling=NEVER_END,
                                          max_tokens=4), scheduler=scheduler)  # pushes the conversation out
        assert len(scheduler.prefix_store) == 1  # ...to host memory
        again = run_one(cached, requests[1], scheduler=scheduler)
        assert again.cached_tokens > 30 and again.text == expected
    finally:
        fresh.close()
        cached.close()
