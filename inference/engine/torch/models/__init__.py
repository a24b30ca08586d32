"""One module per architecture, chosen from `config.json`'s `model_type` (or a GGUF's architecture).

Each module exports: `Args` (with `from_config`), `Model`, `weight_names(args)` (ours / Hugging Face /
GGUF names), `to_gguf`/`from_gguf` (llama.cpp's tensor transforms), `args_from_gguf`, `gguf_metadata`
and `GGUF_ARCH`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from inference.engine.base import ModelRefused

MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
}

# GGUF `general.architecture` -> our module. llama.cpp files Mistral under "llama".
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}


def architecture_for(model_type: str) -> ModuleType:
    """The module that runs `model_type`; a clear error naming the supported ones otherwise."""
    if model_type not in MODEL_TYPES:
        raise ModelRefused(
            f"The torch engine does not support model_type {model_type!r}; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}."
        )
    return importlib.import_module(f"{__name__}.{MODEL_TYPES[model_type]}")


def architecture_for_gguf(arch: str) -> ModuleType:
    if arch not in GGUF_ARCHITECTURES:
        raise ModelRefused(
            f"The torch engine cannot run GGUF architecture {arch!r}; "
            f"supported: {', '.join(sorted(GGUF_ARCHITECTURES))}."
        )
    return importlib.import_module(f"{__name__}.{GGUF_ARCHITECTURES[arch]}")
