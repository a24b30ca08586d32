"""SoftmaxDraw: the llama.cpp backend's draw for a sampled sequence with OpenAI's default filters (none), which
stands in for llama.cpp's `temp` + `dist` chain (inference/engine/llamacpp_sampling.py)."""

from __future__ import annotations

import numpy as np

from inference.engine.llamacpp_sampling import DRAW_BLOCK, SoftmaxDraw

VOCAB = 3 * DRAW_BLOCK + 517  # not a whole number of blocks: the last one is padded


def peaked_logits(seed: int = 0) -> np.ndarray:
    """A model-like row: a few likely tokens (one in the padded last block) over a long, flat tail."""
    logits = np.random.default_rng(seed).normal(0.0, 1.0, VOCAB).astype(np.float32)
    logits[[5, 1500, 2900, VOCAB - 1]] = [9.0, 8.0, 7.5, 8.5]
    return logits


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    weights = np.exp(scaled - scaled.max())
    return weights / weights.sum()


def test_it_draws_each_token_as_often_as_softmax_at_the_temperature_says():
    logits, temperature, draws = peaked_logits(), 0.7, 40_000
    draw = SoftmaxDraw(temperature, seed=11, n_vocab=VOCAB)
    counts = np.bincount([draw(logits) for _ in range(draws)], minlength=VOCAB)
    assert len(counts) == VOCAB  # never a token past the vocabulary (the padding)
    expected = softmax(logits, temperature)
    likely = np.argsort(-expected)[:6]
    for token in likely:
        spread = np.sqrt(draws * expected[token] * (1 - expected[token]))
        assert abs(counts[token] - draws * expected[token]) < 5 * spread, token
    tail = np.setdiff1d(np.arange(VOCAB), likely)
    assert abs(counts[tail].sum() - draws * expected[tail].sum()) < 5 * np.sqrt(draws * expected[tail].sum()) + 5


def test_a_higher_temperature_flattens_the_draw():
    logits = peaked_logits()
    cold = SoftmaxDraw(0.3, seed=1, n_vocab=VOCAB)
    hot = SoftmaxDraw(3.0, seed=1, n_vocab=VOCAB)
    assert len({cold(logits) for _ in range(300)}) < len({hot(logits) for _ in range(300)})


def test_a_seed_gives_the_same_tokens_and_another_seed_others():
    logits = peaked_logits()

    def tokens(seed: int) -> list[int]:
        draw = SoftmaxDraw(1.0, seed=seed, n_vocab=VOCAB)
        return [draw(logits) for _ in range(50)]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)


def test_it_never_draws_a_token_whose_probability_is_zero():
    logits = np.full(VOCAB, -1e6, dtype=np.float32)  # exp underflows to 0 for all but two tokens
    logits[[3, VOCAB - 1]] = [0.0, 0.0]
    draw = SoftmaxDraw(1.0, seed=5, n_vocab=VOCAB)
    assert {draw(logits) for _ in range(500)} == {3, VOCAB - 1}


def test_a_temperature_too_near_zero_to_scale_by_is_greedy():
    logits = peaked_logits()
    logits[0] = 1.0  # a positive logit before the best one: overflowing to infinity, it would look as good
    draw = SoftmaxDraw(1e-40, seed=2, n_vocab=VOCAB)
    assert {draw(logits) for _ in range(20)} == {int(np.argmax(logits))}
