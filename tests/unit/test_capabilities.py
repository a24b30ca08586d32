"""Backend capabilities and the memory estimate the selection checks before loading."""

from __future__ import annotations

import pytest

from inference.engine.base import BACKEND_CAPABILITIES, Capabilities, ModelSpec
from inference.engine.registry import weights_bytes


@pytest.mark.parametrize(("backend", "needs", "missing"), [
    ("llamacpp", {"logprobs", "structured_output", "embeddings"}, []),
    ("llamacpp", {"sampling:repeat_last_n", "sampling:top_k", "batching"}, []),
    ("torch", {"logprobs", "sampling:repeat_last_n"}, ["logprobs"]),
    ("torch", {"embeddings", "structured_output"}, ["embeddings", "structured_output"]),
    ("mlx", {"batching", "sampling:seed"}, []),
    ("mlx", {"logprobs"}, ["logprobs"]),
])
def test_each_backend_says_which_needs_it_cannot_honour(backend, needs, missing):
    assert BACKEND_CAPABILITIES[backend].lacks(frozenset(needs)) == missing


def test_the_backend_classes_declare_the_shared_capabilities():
    from inference.engine.llamacpp import LlamaCppBackend
    from inference.engine.mlx import MlxBackend
    from inference.engine.torch.backend import TorchBackend

    for cls in (LlamaCppBackend, TorchBackend, MlxBackend):
        assert isinstance(cls.capabilities, Capabilities)
        assert cls.capabilities is BACKEND_CAPABILITIES[cls.name]


@pytest.mark.parametrize(("backend", "fmt", "options", "quantization", "expected"), [
    ("torch", "hf-safetensors", {"dtype": "float32"}, "bf16", 4_000),
    ("torch", "hf-safetensors", {}, "f32", 4_000),  # CPU: fp32 unless the checkpoint is bf16
    ("torch", "hf-safetensors", {}, "bf16", 2_000),
    ("torch", "gguf", {}, "Q4_K_M", 4_000),
    ("torch", "gguf", {"dtype": "bfloat16"}, "Q4_K_M", 2_000),
    ("llamacpp", "hf-safetensors", {}, "f32", 2_000),  # converted to an f16 GGUF first
    ("llamacpp", "gguf", {}, "Q4_K_M", 700),  # the file as it is
    ("mlx", "mlx", {}, "4-bit", 700),
])
def test_weights_take_what_each_backend_holds_in_memory(backend, fmt, options, quantization, expected):
    spec = ModelSpec(path="/m", format=fmt, options=options)
    assert weights_bytes(backend, spec, parameter_count=1_000, size_bytes=700, quantization=quantization) == expected
