"""The MLX backend on a tiny random Llama, for real on Linux CPU (`pip install "mlx[cpu]" mlx-lm`)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from inference.engine.base import (
    BackendUnavailable,
    ContextLengthExceeded,
    GenerationRequest,
    InvalidRequest,
    ModelRefused,
    ModelSpec,
)
from inference.engine.formats import detect_format
from inference.engine.mlx import PREFILL_CHUNK_TOKENS, MlxBackend, mlx_import_error
from inference.engine.mlx_convert import convert_hf_to_mlx
from inference.engine.sampling import SamplingParams
from tests.unit.mlx_models import BOS, build_tiny_llama

needs_mlx = pytest.mark.skipif(
    mlx_import_error() is not None,
    reason=f'mlx is not importable ({mlx_import_error()}): pip install "mlx[cpu]" mlx-lm',
)
GREEDY = SamplingParams(temperature=0.0)
PROMPT = "hello world"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("mlx") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    model = MlxBackend().load(ModelSpec(path=str(tiny_llama_dir), format="hf-safetensors", n_ctx=256))
    yield model
    model.close()


def run(model, should_stop=lambda: False, **request):
    events = list(model.generate(GenerationRequest(**request), should_stop))
    assert events[0].kind == "started" and events[-1].kind == "done"
    return events


def token_ids(events):
    return [e.token_id for e in events if e.kind == "token" and e.token_id is not None]


def text(events):
    return "".join(e.text for e in events if e.kind == "token")


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


@needs_mlx
def test_it_decodes_the_same_greedy_tokens_as_transformers(tiny_llama, tiny_llama_dir):
    prompt_ids = tiny_llama.tokenize(PROMPT)

    events = run(tiny_llama, prompt=PROMPT, sampling=GREEDY, max_tokens=32)

    assert events[0].prompt_tokens == len(prompt_ids)
    assert token_ids(events) == transformers_greedy(tiny_llama_dir, prompt_ids, 32)


@needs_mlx
def test_it_counts_prompt_and_completion_tokens_and_times_them(tiny_llama):
    events = run(tiny_llama, prompt=PROMPT, sampling=GREEDY, max_tokens=12)
    done = events[-1]

    assert [e.kind for e in events].count("token") >= 12
    assert len(token_ids(events)) == done.completion_tokens == 12
    assert done.prompt_tokens == events[0].prompt_tokens == len(tiny_llama.tokenize(PROMPT)) == 3
    assert done.finish_reason == "length"
    assert done.time_to_first_token > 0 and done.tokens_per_second > 0


@needs_mlx
def test_it_does_not_add_a_second_bos(tiny_llama):
    assert tiny_llama.tokenize(BOS + PROMPT) == tiny_llama.tokenize(PROMPT)
    assert tiny_llama.tokenize(PROMPT).count(tiny_llama.tokenize("")[0]) == 1


@needs_mlx
def test_it_streams_text_that_joins_up_to_the_decoded_tokens(tiny_llama):
    events = run(tiny_llama, prompt=PROMPT, sampling=GREEDY, max_tokens=32)

    assert text(events) == tiny_llama._tokenizer.decode(token_ids(events), skip_special_tokens=True)


@needs_mlx
def test_it_cuts_at_a_stop_string_that_spans_tokens_and_never_emits_it(tiny_llama):
    events = run(tiny_llama, prompt=PROMPT, sampling=GREEDY, max_tokens=32)
    pieces = [e.text for e in events if e.kind == "token"]
    full = "".join(pieces)
    boundary = len("".join(pieces[:6]))
    stop = full[boundary - 1 : boundary + 2]  # the end of one token's text and the start of the next

    stopped = run(tiny_llama, prompt=PROMPT, sampling=GREEDY, max_tokens=32, stop=("zzz-never", stop))

    assert text(stopped) == full[: full.index(stop)]
    assert stopped[-1].finish_reason == "stop"
    assert stopped[-1].completion_tokens < 32


@needs_mlx
def test_it_stops_within_one_token_when_cancelled(tiny_llama):
    seen = []
    request = GenerationRequest(prompt=PROMPT, sampling=GREEDY, max_tokens=32)
    stream = tiny_llama.generate(request, should_stop=lambda: bool(seen))

    for event in stream:
        if event.kind == "token":
            seen.append(event)

    assert len(seen) == 1
    assert event.kind == "done" and event.finish_reason == "cancelled" and event.completion_tokens == 1


@needs_mlx
def test_it_generates_nothing_when_cancelled_before_the_first_token(tiny_llama):
    events = run(tiny_llama, lambda: True, prompt=PROMPT, sampling=GREEDY, max_tokens=32)

    assert token_ids(events) == []
    assert events[-1].finish_reason == "cancelled" and events[-1].completion_tokens == 0


@needs_mlx
def test_it_stops_at_the_end_of_sequence_token(tiny_llama):
    eos = min(tiny_llama.eos_token_ids)

    events = run(tiny_llama, prompt=PROMPT, sampling=SamplingParams(temperature=0.0, logit_bias={eos: 100.0}))

    assert token_ids(events) == [] and text(events) == ""
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 0


@needs_mlx
def test_it_gives_the_same_text_for_the_same_seed(tiny_llama):
    def sampled(seed):
        sampling = SamplingParams(temperature=1.0, seed=seed)
        return token_ids(run(tiny_llama, prompt=PROMPT, max_tokens=24, sampling=sampling))

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)


@needs_mlx
@pytest.mark.parametrize(
    "penalty",
    [{"repeat_penalty": 1e6}, {"presence_penalty": 100.0}, {"frequency_penalty": 100.0}],
    ids=["repeat", "presence", "frequency"],
)
def test_it_penalizes_tokens_already_in_the_window(tiny_llama, penalty):
    prompt_ids = tiny_llama.tokenize(PROMPT)
    plain = token_ids(run(tiny_llama, prompt=PROMPT, sampling=GREEDY, max_tokens=32))
    assert len(set(plain)) < len(plain), "greedy decoding repeats itself without a penalty"

    sampling = SamplingParams(temperature=0.0, repeat_last_n=-1, **penalty)
    penalized = token_ids(run(tiny_llama, prompt=PROMPT, sampling=sampling, max_tokens=32))

    assert len(penalized) == 32
    assert len(set(prompt_ids + penalized)) == len(prompt_ids + penalized)


@needs_mlx
def test_it_refuses_a_prompt_longer_than_the_context(tiny_llama_dir):
    model = MlxBackend().load(ModelSpec(path=str(tiny_llama_dir), format="hf-safetensors", n_ctx=8))
    prompt = "one two three four five six seven eight nine ten"

    with pytest.raises(ContextLengthExceeded) as refused:
        next(model.generate(GenerationRequest(prompt=prompt)))

    assert f"{len(model.tokenize(prompt))} tokens" in refused.value.message
    assert "8 tokens" in refused.value.message


@needs_mlx
def test_it_ends_with_length_when_the_context_is_full(tiny_llama_dir):
    model = MlxBackend().load(ModelSpec(path=str(tiny_llama_dir), format="hf-safetensors", n_ctx=10))

    no_eos = SamplingParams(temperature=0.0, logit_bias={eos: -100.0 for eos in model.eos_token_ids})

    events = run(model, prompt=PROMPT, sampling=no_eos)

    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 10 - 3


@needs_mlx
def test_it_rejects_a_logit_bias_outside_the_vocabulary(tiny_llama):
    with pytest.raises(InvalidRequest, match="logit_bias"):
        run(tiny_llama, prompt=PROMPT, sampling=SamplingParams(logit_bias={10_000: 5.0}))


@needs_mlx
def test_it_renders_messages_with_the_sandboxed_template_without_a_second_bos(tiny_llama_dir):
    template = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    spec = ModelSpec(path=str(tiny_llama_dir), format="hf-safetensors", n_ctx=256, chat_template=template)
    model = MlxBackend().load(spec)
    messages = [{"role": "user", "content": "hello"}]
    request = GenerationRequest(messages=messages, sampling=GREEDY, max_tokens=4)

    assert model.render_prompt(request) == f"{BOS}user: hello\nassistant:"
    events = run(model, messages=request.messages, sampling=GREEDY, max_tokens=4)
    assert events[0].prompt_tokens == len(model.tokenize("user: hello\nassistant:"))


@needs_mlx
def test_it_stops_a_long_prefill_between_chunks(tiny_llama_dir):
    model = MlxBackend().load(ModelSpec(path=str(tiny_llama_dir), format="hf-safetensors", n_ctx=2048))
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 80)
    assert len(model.tokenize(long_prompt)) > PREFILL_CHUNK_TOKENS
    checks = []

    events = run(model, lambda: checks.append(1) or len(checks) > 1, prompt=long_prompt, sampling=GREEDY)

    assert len(checks) == 2  # once before the first token, once between the first two prompt chunks
    assert token_ids(events) == [] and events[-1].finish_reason == "cancelled"


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

    model = MlxBackend().load(ModelSpec(path=str(converted), format="mlx", n_ctx=256))
    no_eos = SamplingParams(temperature=0.0, logit_bias={eos: -100.0 for eos in model.eos_token_ids})
    events = run(model, prompt=PROMPT, sampling=no_eos, max_tokens=8)

    assert events[-1].completion_tokens == len(token_ids(events)) == 8
    assert model.memory_bytes < tiny_llama.memory_bytes * bits / 16


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
        MlxBackend().load(ModelSpec(path=str(tmp_path / "custom"), format="hf-safetensors"))
