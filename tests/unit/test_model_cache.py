"""The worker's model cache: models stay loaded across jobs; past the memory budget the least recently used go."""

from __future__ import annotations

import pytest

from inference.engine.base import ModelSpec
from inference.engine.registry import ModelCache, choose_backend
from tests.factories import build_tiny_gguf


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    return [ModelSpec(path=str(build_tiny_gguf(folder / f"m{i}.gguf", seed=i)), format="gguf", architecture="llama",
                      n_ctx=128, n_threads=1) for i in range(3)]


def test_it_keeps_a_model_loaded_across_jobs(specs):
    cache = ModelCache(memory_budget_bytes=10**10)
    first = cache.get("llamacpp", specs[0])
    assert cache.get("llamacpp", specs[0]) is first
    cache.clear()


def test_it_evicts_the_least_recently_used_model_past_the_budget(specs):
    probe = ModelCache(memory_budget_bytes=10**10)
    one_model = probe.get("llamacpp", specs[0]).memory_bytes
    probe.clear()
    cache = ModelCache(memory_budget_bytes=int(one_model * 2.5))
    cache.get("llamacpp", specs[0])
    cache.get("llamacpp", specs[1])
    cache.get("llamacpp", specs[0])  # 0 is now the most recently used
    cache.get("llamacpp", specs[2])
    assert [path for _, path in cache.loaded_keys()] == [specs[0].path, specs[2].path]
    assert cache.used_bytes() <= cache.memory_budget_bytes
    cache.clear()


def test_it_keeps_a_model_bigger_than_the_budget_alone_rather_than_refusing(specs):
    cache = ModelCache(memory_budget_bytes=1)
    cache.get("llamacpp", specs[0])
    cache.get("llamacpp", specs[1])
    assert [path for _, path in cache.loaded_keys()] == [specs[1].path]
    cache.clear()


@pytest.mark.parametrize(
    ("model_format", "choices", "expected"),
    [
        ("gguf", (None, "", ""), "llamacpp"),
        ("hf-safetensors", (None, "", ""), "torch"),
        ("mlx", (None, "", ""), "mlx"),
        ("gguf", (None, "torch", ""), "torch"),
        ("gguf", ("mlx", "torch", "llamacpp"), "mlx"),
        ("hf-safetensors", (None, "", "mlx"), "mlx"),
    ],
)
def test_it_chooses_request_then_model_then_server_default_then_native(model_format, choices, expected):
    assert choose_backend(model_format, *choices) == expected
