"""The sampler of our own engines: llama.cpp's chain order and formulas, reproducible by seed."""

from __future__ import annotations

import pytest
import torch

from inference.engine.sampling import (
    SamplingParams,
    apply_penalties,
    filter_candidates,
    make_generator,
    sample_next_token,
)

LOGITS = torch.tensor([1.0, 3.0, 2.0, -1.0, 0.5])


def draws(params: SamplingParams, n: int = 200, history=()) -> set[int]:
    generator = make_generator(0)
    return {sample_next_token(LOGITS, params, list(history), generator) for _ in range(n)}


def test_temperature_zero_is_argmax():
    assert sample_next_token(LOGITS, SamplingParams(temperature=0), [], None) == 1


def test_logit_bias_can_force_or_ban_a_token():
    assert sample_next_token(LOGITS, SamplingParams(temperature=0, logit_bias={4: 100.0}), [], None) == 4
    assert sample_next_token(LOGITS, SamplingParams(temperature=0, logit_bias={1: -100.0}), [], None) == 2


def test_top_k_keeps_the_k_best():
    assert draws(SamplingParams(temperature=5.0, top_k=2)) == {1, 2}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, -1)  # token 1: 0.63, token 2: 0.23
    ids, _ = filter_candidates(LOGITS, SamplingParams(top_p=float(probs[1]) + 0.01))
    assert ids.tolist() == [1, 2]


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    ids, _ = filter_candidates(LOGITS, SamplingParams(min_p=0.3))  # e^-1 = 0.37 of the best survives
    assert ids.tolist() == [1, 2]


def test_all_tokens_can_be_drawn_without_filters():
    assert draws(SamplingParams(temperature=10.0), n=500) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # repeat penalty divides positive logits and multiplies negative ones
        (SamplingParams(repeat_penalty=2.0), [1.0, 1.5, 2.0, -2.0, 0.5]),
        # frequency subtracts per occurrence, presence once
        (SamplingParams(frequency_penalty=0.5), [1.0, 2.0, 2.0, -1.5, 0.5]),
        (SamplingParams(presence_penalty=0.25), [1.0, 2.75, 2.0, -1.25, 0.5]),
    ],
)
def test_penalties_follow_llama_cpp(params, expected):
    logits = LOGITS.clone()
    apply_penalties(logits, params, [1, 1, 3])
    assert logits.tolist() == pytest.approx(expected)


def test_penalties_only_look_at_the_last_repeat_last_n_tokens():
    logits = LOGITS.clone()
    apply_penalties(logits, SamplingParams(presence_penalty=1.0, repeat_last_n=1), [1, 3])
    assert logits.tolist() == pytest.approx([1.0, 3.0, 2.0, -2.0, 0.5])


def test_the_same_seed_gives_the_same_tokens():
    params = SamplingParams(temperature=1.5, seed=1234)
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))

    def run():
        generator = make_generator(params.seed)
        return [sample_next_token(logits, params, [], generator) for _ in range(20)]

    assert run() == run()
    assert len(set(run())) > 1
