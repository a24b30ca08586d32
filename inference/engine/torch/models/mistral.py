"""Mistral: the Llama graph with a sliding attention window (llama.cpp runs it as "llama")."""

from __future__ import annotations

from typing import Any

from inference.engine.torch.models import llama
from inference.engine.torch.models.llama import (
    Model,
    args_from_gguf,
    from_gguf,
    gguf_metadata,
    to_gguf,
    weight_names,
)

GGUF_ARCH = "llama"

__all__ = ["GGUF_ARCH", "Args", "Model", "args_from_gguf", "from_gguf", "gguf_metadata", "to_gguf", "weight_names"]


class Args(llama.Args):
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> llama.Args:
        args = super().from_config(config)
        args.sliding_window = config.get("sliding_window")
        return args
