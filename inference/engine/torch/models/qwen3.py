"""Qwen3: the Llama graph with per-head RMS norms on queries and keys, no biases."""

from __future__ import annotations

from typing import Any

from inference.engine.base import ModelRefused
from inference.engine.torch.models import llama, weights
from inference.engine.torch.models.llama import gguf_metadata
from inference.engine.torch.models.qwen2 import from_gguf, to_gguf

GGUF_ARCH = "qwen3"

__all__ = ["GGUF_ARCH", "Args", "Model", "args_from_gguf", "from_gguf", "gguf_metadata", "to_gguf", "weight_names"]

QK_NORM_WEIGHTS = {
    "attn.q_norm.weight": ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    "attn.k_norm.weight": ("self_attn.k_norm.weight", "attn_k_norm.weight"),
}


class Args(llama.Args):
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> llama.Args:
        if config.get("use_sliding_window"):
            raise ModelRefused("Qwen3 checkpoints with use_sliding_window are not supported.")
        return super().from_config(config)


class Model(llama.Model):
    qk_norm = True


def weight_names(args: llama.Args) -> list[weights.WeightName]:
    layer = llama.LAYER_WEIGHTS | QK_NORM_WEIGHTS | (llama.BIAS_WEIGHTS if args.attention_bias else {})
    return weights.expand(llama.GLOBAL_WEIGHTS, layer, args.n_layers, tied_embeddings=args.tie_word_embeddings)


def args_from_gguf(meta: dict[str, Any], vocab_size: int) -> llama.Args:
    return llama.args_from_gguf(meta, vocab_size)
