"""The llama.cpp backend on tiny real GGUF models: prompts, limits, stopping, and settings that reach llama.cpp."""

from __future__ import annotations

import pytest

from inference.engine.base import ContextLengthExceeded, GenerationRequest, ModelSpec
from inference.engine.llamacpp import LlamaCppBackend
from inference.engine.sampling import SamplingParams
from tests.factories import (
    CHATML,
    TINY_GGUF_BOS_ID,
    TINY_GGUF_EOS_ID,
    TINY_GGUF_IM_END_ID,
    TINY_GGUF_IM_START_ID,
    build_tiny_gguf,
)

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("llamacpp") / "tiny.gguf", chat_template=CHATML,
                           context_length=256)


def load(path, **overrides):
    spec = dict(path=str(path), format="gguf", architecture="llama", n_ctx=256, n_threads=1,
                chat_template=CHATML)
    spec.update(overrides)
    return LlamaCppBackend().load(ModelSpec(**spec))


@pytest.fixture(scope="module")
def model(gguf_path):
    loaded = load(gguf_path)
    yield loaded
    loaded.close()


def run(model, request, should_stop=lambda: False):
    return list(model.generate(request, should_stop=should_stop))


@pytest.mark.parametrize(("layers", "llama_cpp_sees"), [(0, 0), (7, 7), (-1, 2**31 - 1)])  # -1: every layer
def test_it_passes_the_number_of_gpu_layers_to_llama_cpp(gguf_path, layers, llama_cpp_sees):
    loaded = load(gguf_path, n_gpu_layers=layers)
    try:
        assert loaded.llm.model_params.n_gpu_layers == llama_cpp_sees
    finally:
        loaded.close()


def test_it_parses_special_tokens_and_adds_exactly_one_bos(model):
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}])
    assert model.render_prompt(request).startswith("<|im_start|>user\nhi<|im_end|>")
    tokens = model.tokenize_prompt(request)
    assert tokens[:2] == [TINY_GGUF_BOS_ID, TINY_GGUF_IM_START_ID]
    assert tokens.count(TINY_GGUF_BOS_ID) == 1


def test_it_adds_no_second_bos_when_the_template_writes_one(gguf_path):
    loaded = load(gguf_path, chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    try:
        tokens = loaded.tokenize_prompt(GenerationRequest(messages=[{"role": "user", "content": "hi"}]))
        assert tokens.count(TINY_GGUF_BOS_ID) == 1 and tokens[0] == TINY_GGUF_BOS_ID
    finally:
        loaded.close()


def test_it_streams_started_tokens_then_done_with_counts(model):
    events = run(model, GenerationRequest(prompt="the", sampling=GREEDY, max_tokens=8))
    assert [e.kind for e in events][:1] == ["started"] and events[-1].kind == "done"
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 8
    assert events[-1].prompt_tokens == events[0].prompt_tokens > 0


def test_it_refuses_a_prompt_that_does_not_fit(model):
    with pytest.raises(ContextLengthExceeded, match="256"):
        run(model, GenerationRequest(prompt="the " * 400, max_tokens=4))


def test_it_stops_with_length_when_the_context_is_full(model):
    never_end = SamplingParams(temperature=0, logit_bias={TINY_GGUF_EOS_ID: -100, TINY_GGUF_IM_END_ID: -100})
    done = run(model, GenerationRequest(prompt="the " * 100, sampling=never_end))[-1]
    assert done.finish_reason == "length"
    assert done.prompt_tokens + done.completion_tokens == 256


def test_it_leaves_out_the_oldest_turns_of_a_long_chat_but_keeps_the_system_prompt(model):
    messages = [{"role": "system", "content": "You are terse."}]
    for turn in range(12):
        messages += [{"role": "user", "content": f"question {turn} " + "the " * 20},
                     {"role": "assistant", "content": "answer " * 10}]
    messages.append({"role": "user", "content": "last question"})
    request = GenerationRequest(messages=messages, sampling=GREEDY, max_tokens=4, fit_history=True)
    events = run(model, request)
    assert events[0].dropped_messages > 0
    assert events[0].prompt_tokens <= 256 - 64
    assert events[-1].finish_reason == "length"


def test_it_stops_within_one_token_when_asked(model):
    seen = []

    def should_stop():
        return len(seen) >= 3

    for event in model.generate(GenerationRequest(prompt="the", sampling=GREEDY, max_tokens=100), should_stop):
        if event.kind == "token":
            seen.append(event)
        last = event
    assert last.finish_reason == "cancelled"
    assert last.completion_tokens <= 4


def test_it_gives_the_same_text_for_the_same_seed(model):
    sampled = GenerationRequest(prompt="once", sampling=SamplingParams(temperature=1.0, seed=99), max_tokens=16)

    def text():
        return "".join(e.text for e in run(model, sampled))

    assert text() == text()


def test_it_bans_a_token_with_logit_bias(model):
    greedy = run(model, GenerationRequest(prompt="the", sampling=GREEDY, max_tokens=1))
    first = next(e.token_id for e in greedy if e.kind == "token")
    banned = run(model, GenerationRequest(prompt="the", max_tokens=1,
                                          sampling=SamplingParams(temperature=0, logit_bias={first: -100})))
    assert all(e.token_id != first for e in banned if e.kind == "token")


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
