"""Llama (1, 2, 3 with its rope scaling); Mistral and Qwen2 reuse it with their own config readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from inference.engine.torch.models import weights
from inference.engine.torch.models.layers import (
    Attention,
    ForwardStep,
    GatedMLP,
    KVCache,
    RMSNorm,
    Rotary,
    logits_of,
    rope_inv_freq,
)

GGUF_ARCH = "llama"


@dataclass
class Args:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 4096
    hidden_act: str = "silu"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Args:
        n_heads = config["num_attention_heads"]
        theta, scaling = rope_settings(config)
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // n_heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            hidden_act=config.get("hidden_act", "silu"),
        )


def rope_settings(config: dict[str, Any], default_theta: float = 10000.0) -> tuple[float, dict | None]:
    """(theta, scaling) from a transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`) config."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        scaling = None if params.get("rope_type", "default") == "default" else params
        return float(params["rope_theta"]), scaling
    return float(config.get("rope_theta", default_theta)), config.get("rope_scaling")


# ours: (hugging face, gguf)
GLOBAL_WEIGHTS = {
    "embed.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "norm.weight": ("model.norm.weight", "output_norm.weight"),
    "lm_head.weight": ("lm_head.weight", "output.weight"),
}
LAYER_WEIGHTS = {
    "attn_norm.weight": ("input_layernorm.weight", "attn_norm.weight"),
    "attn.q.weight": ("self_attn.q_proj.weight", "attn_q.weight"),
    "attn.k.weight": ("self_attn.k_proj.weight", "attn_k.weight"),
    "attn.v.weight": ("self_attn.v_proj.weight", "attn_v.weight"),
    "attn.o.weight": ("self_attn.o_proj.weight", "attn_output.weight"),
    "mlp_norm.weight": ("post_attention_layernorm.weight", "ffn_norm.weight"),
    "mlp.gate.weight": ("mlp.gate_proj.weight", "ffn_gate.weight"),
    "mlp.up.weight": ("mlp.up_proj.weight", "ffn_up.weight"),
    "mlp.down.weight": ("mlp.down_proj.weight", "ffn_down.weight"),
}
BIAS_WEIGHTS = {
    "attn.q.bias": ("self_attn.q_proj.bias", "attn_q.bias"),
    "attn.k.bias": ("self_attn.k_proj.bias", "attn_k.bias"),
    "attn.v.bias": ("self_attn.v_proj.bias", "attn_v.bias"),
}


def weight_names(args: Args) -> list[weights.WeightName]:
    layer = dict(LAYER_WEIGHTS) | (BIAS_WEIGHTS if args.attention_bias else {})
    return weights.expand(GLOBAL_WEIGHTS, layer, args.n_layers, tied_embeddings=args.tie_word_embeddings)


def to_gguf(ours: str, tensor: torch.Tensor, args: Args) -> torch.Tensor:
    """llama.cpp's "llama" graph expects Q/K rows interleaved for its rope."""
    if ours.endswith("attn.q.weight"):
        return weights.permute_for_gguf(tensor, args.n_heads)
    if ours.endswith("attn.k.weight"):
        return weights.permute_for_gguf(tensor, args.n_kv_heads)
    return tensor


def from_gguf(ours: str, tensor: torch.Tensor, args: Args) -> torch.Tensor:
    if ours.endswith("attn.q.weight"):
        return weights.unpermute_from_gguf(tensor, args.n_heads)
    if ours.endswith("attn.k.weight"):
        return weights.unpermute_from_gguf(tensor, args.n_kv_heads)
    return tensor


class Block(nn.Module):
    def __init__(self, args: Args, *, qk_norm: bool = False):
        super().__init__()
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.attn = Attention(
            args.hidden_size, args.n_heads, args.n_kv_heads, args.head_dim,
            scale=args.head_dim**-0.5, bias=args.attention_bias,
            qk_norm_eps=args.rms_norm_eps if qk_norm else None, sliding_window=args.sliding_window,
        )
        self.mlp_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act)

    def forward(self, x, rope, layer: int, step: ForwardStep, cache: KVCache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, layer, step, cache)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    """Decoder-only transformer: tokens (B, T) at positions (B, T) -> logits (B, T or 1, V)."""

    qk_norm = False

    def __init__(self, args: Args):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args, qk_norm=self.qk_norm) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.rotary = Rotary(torch.empty(args.head_dim // 2))

    def reset_buffers(self, device: torch.device | str) -> None:
        """Compute the rope frequencies (after weights were assigned from a meta-device build)."""
        self.rotary = Rotary(rope_inv_freq(self.args.head_dim, self.args.rope_theta, self.args.rope_scaling)
                             ).to(device)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.args.tie_word_embeddings else self.lm_head.weight

    def forward(self, tokens: torch.Tensor, step: ForwardStep, cache: KVCache, *, last_only: bool = True
                ) -> torch.Tensor:
        x = self.embed(tokens)  # (B, T, C)
        rope = self.rotary(step.positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, i, step, cache)
        return logits_of(self.norm(x), self.output_weight, last_only)


def args_from_gguf(meta: dict[str, Any], vocab_size: int) -> Args:
    """Args from a GGUF header (keys without the `<arch>.` prefix)."""
    n_heads = meta["attention.head_count"]
    hidden = meta["embedding_length"]
    scaling = None
    if meta.get("rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": meta["rope.scaling.factor"]}
    return Args(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=meta["feed_forward_length"],
        n_layers=meta["block_count"],
        n_heads=n_heads,
        n_kv_heads=meta.get("attention.head_count_kv", n_heads),
        head_dim=meta.get("attention.key_length") or meta.get("rope.dimension_count") or hidden // n_heads,
        rms_norm_eps=meta.get("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=meta.get("rope.freq_base", 10000.0),
        rope_scaling=scaling,
        max_position_embeddings=meta.get("context_length", 4096),
    )


def gguf_metadata(args: Args) -> dict[str, Any]:
    """The `<arch>.` header keys llama.cpp reads for this architecture."""
    meta = {
        **weights.shape_metadata(args),
        "attention.layer_norm_rms_epsilon": args.rms_norm_eps,
        "attention.key_length": args.head_dim,
        "attention.value_length": args.head_dim,
        "rope.dimension_count": args.head_dim,
        "rope.freq_base": args.rope_theta,
        "vocab_size": args.vocab_size,
    }
    scaling = args.rope_scaling or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        meta["rope.scaling.type"] = "linear"
        meta["rope.scaling.factor"] = float(scaling["factor"])
    return meta
