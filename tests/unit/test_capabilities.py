"""What each backend is, read without importing it: capabilities, names, and the memory estimate the selection
checks before loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.engine.backends import BACKENDS, backend_names, find_backend, unknown_backend
from inference.engine.base import Capabilities, ModelSpec
from inference.engine.registry import native_backend


@pytest.mark.parametrize(("backend", "needs", "missing"), [
    ("llamacpp", {"logprobs", "structured_output", "embeddings"}, []),
    ("llamacpp", {"sampling:repeat_last_n", "sampling:top_k", "batching"}, []),
    ("torch", {"logprobs", "sampling:repeat_last_n"}, ["logprobs"]),
    ("torch", {"embeddings", "structured_output"}, ["embeddings", "structured_output"]),
    ("mlx", {"batching", "sampling:seed"}, []),
    ("mlx", {"logprobs"}, ["logprobs"]),
])
def test_each_backend_says_which_needs_it_cannot_honour(backend, needs, missing):
    assert find_backend(backend).capabilities.lacks(frozenset(needs)) == missing


def test_the_backend_classes_take_their_name_and_capabilities_from_their_descriptor():
    from inference.engine.llamacpp import LlamaCppBackend
    from inference.engine.mlx import MlxBackend
    from inference.engine.torch.backend import TorchBackend

    for cls, info in zip((LlamaCppBackend, TorchBackend, MlxBackend), BACKENDS, strict=True):
        assert info.implementation.endswith(f":{cls.__name__}")
        assert cls.name == info.name
        assert isinstance(cls.capabilities, Capabilities)
        assert cls.capabilities is info.capabilities


def test_the_web_process_reads_the_descriptors_and_imports_no_backend():
    code = ("import sys, django; django.setup(); "
            "import inference.selection, inference.services, webui.views, api.api; "
            "print(sorted({'torch', 'llama_cpp', 'mlx', 'mlx_lm'} & set(sys.modules)))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                              cwd=Path(__file__).parents[2]).stdout
    assert imported.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("model_format", "backend"), [("gguf", "llamacpp"), ("hf-safetensors", "torch"),
                                                       ("mlx", "mlx")])
def test_each_format_has_its_native_backend(model_format, backend):
    assert native_backend(model_format) == backend


def test_an_unknown_backend_is_answered_with_the_names_hearth_has():
    assert find_backend("tensorrt") is None
    assert backend_names() == "llamacpp, torch or mlx"
    assert unknown_backend("tensorrt") == "Unknown backend 'tensorrt'; choose llamacpp, torch or mlx."


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
    info = find_backend(backend)
    assert info.weights_bytes(spec, parameter_count=1_000, size_bytes=700, quantization=quantization) == expected
