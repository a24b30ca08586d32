"""Qwen2: the Llama graph with biases on the q/k/v projections, and no permuted rows in GGUF."""

from __future__ import annotations

from typing import Any

import torch

from inference.engine.base import ModelRefused
from inference.engine.torch.models import llama
from inference.engine.torch.models.llama import Model, gguf_metadata, weight_names

GGUF_ARCH = "qwen2"

__all__ = ["GGUF_ARCH", "Args", "Model", "args_from_gguf", "from_gguf", "gguf_metadata", "to_gguf", "weight_names"]


class Args(llama.Args):
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> llama.Args:
        if config.get("use_sliding_window"):
            raise ModelRefused("Qwen2 checkpoints with use_sliding_window are not supported.")
        args = super().from_config(config)
        args.attention_bias = True
        return args


def args_from_gguf(meta: dict[str, Any], vocab_size: int) -> llama.Args:
    args = llama.args_from_gguf(meta, vocab_size)
    args.attention_bias = True
    return args


def to_gguf(ours: str, tensor: torch.Tensor, args: llama.Args) -> torch.Tensor:
    return tensor  # llama.cpp runs qwen2 with the rotate-half ("neox") rope: rows stay as they are


from_gguf = to_gguf
