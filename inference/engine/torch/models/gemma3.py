"""Gemma 3 (text): scaled embeddings, four norms per layer stored as `weight - 1`, q/k norms,
sliding-window layers with their own rope base between full-attention layers, GELU MLP."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from inference.engine.base import ModelRefused
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

GGUF_ARCH = "gemma3"
SLIDING, FULL = "sliding_attention", "full_attention"
LLAMA_CPP_SLIDING_PATTERN = 6  # llama.cpp assumes every 6th layer is full attention
LLAMA_CPP_LOCAL_ROPE_THETA = 10000.0

# Checkpoints of the multimodal Gemma3ForConditionalGeneration nest the text model.
HF_PREFIX_ALIASES = (
    ("model.", "language_model.model."),
    ("model.", "model.language_model."),
    ("lm_head.", "language_model.lm_head."),
)


@dataclass
class Args:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None
    rope_local_theta: float = LLAMA_CPP_LOCAL_ROPE_THETA
    query_pre_attn_scalar: float = 256
    sliding_window: int = 4096
    layer_types: list[str] = field(default_factory=list)
    final_logit_softcapping: float | None = None
    max_position_embeddings: int = 32768
    hidden_act: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if not self.layer_types:
            self.layer_types = default_layer_types(self.n_layers, LLAMA_CPP_SLIDING_PATTERN)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Args:
        if "text_config" in config:  # the multimodal wrapper: only its language model runs here
            config = config["text_config"]
        if config.get("attn_logit_softcapping") is not None:
            raise ModelRefused("Gemma checkpoints with attention logit soft-capping are not supported.")
        n_layers = config.get("num_hidden_layers", 26)
        theta, scaling, local_theta = _rope_settings(config)
        layer_types = config.get("layer_types") or default_layer_types(
            n_layers, config.get("sliding_window_pattern", LLAMA_CPP_SLIDING_PATTERN))
        return cls(
            vocab_size=config.get("vocab_size", 262_208),
            hidden_size=config.get("hidden_size", 2304),
            intermediate_size=config.get("intermediate_size", 9216),
            n_layers=n_layers,
            n_heads=config.get("num_attention_heads", 8),
            n_kv_heads=config.get("num_key_value_heads", 4),
            head_dim=config.get("head_dim", 256),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            rope_local_theta=local_theta,
            query_pre_attn_scalar=config.get("query_pre_attn_scalar", 256),
            sliding_window=config.get("sliding_window", 4096),
            layer_types=list(layer_types),
            final_logit_softcapping=config.get("final_logit_softcapping"),
            max_position_embeddings=config.get("max_position_embeddings", 131072),
            hidden_act=config.get("hidden_activation", "gelu_pytorch_tanh"),
            tie_word_embeddings=config.get("tie_word_embeddings", True),
        )


def default_layer_types(n_layers: int, pattern: int) -> list[str]:
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]


def _rope_settings(config: dict[str, Any]) -> tuple[float, dict | None, float]:
    """(global theta, global scaling, local theta) from a transformers 4 or 5 config."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and FULL in params:
        full, local = params[FULL], params.get(SLIDING, {})
        scaling = None if full.get("rope_type", "default") == "default" else full
        return float(full["rope_theta"]), scaling, float(local.get("rope_theta", LLAMA_CPP_LOCAL_ROPE_THETA))
    return (float(config.get("rope_theta", 1_000_000.0)), config.get("rope_scaling"),
            float(config.get("rope_local_base_freq", LLAMA_CPP_LOCAL_ROPE_THETA)))


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
    "attn.q_norm.weight": ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    "attn.k_norm.weight": ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    "post_attn_norm.weight": ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    "mlp_norm.weight": ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    "mlp.gate.weight": ("mlp.gate_proj.weight", "ffn_gate.weight"),
    "mlp.up.weight": ("mlp.up_proj.weight", "ffn_up.weight"),
    "mlp.down.weight": ("mlp.down_proj.weight", "ffn_down.weight"),
    "post_mlp_norm.weight": ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
}


def weight_names(args: Args) -> list[weights.WeightName]:
    return weights.expand(GLOBAL_WEIGHTS, LAYER_WEIGHTS, args.n_layers, tied_embeddings=args.tie_word_embeddings)


def to_gguf(ours: str, tensor: torch.Tensor, args: Args) -> torch.Tensor:
    """llama.cpp stores Gemma's norms as `1 + weight` (the multiplier itself)."""
    return tensor + 1.0 if ours.endswith("norm.weight") else tensor


def from_gguf(ours: str, tensor: torch.Tensor, args: Args) -> torch.Tensor:
    return tensor - 1.0 if ours.endswith("norm.weight") else tensor


class Block(nn.Module):
    def __init__(self, args: Args, layer_type: str):
        super().__init__()
        self.is_sliding = layer_type == SLIDING
        eps = args.rms_norm_eps
        self.attn_norm = RMSNorm(args.hidden_size, eps, unit_offset=True)
        self.attn = Attention(
            args.hidden_size, args.n_heads, args.n_kv_heads, args.head_dim,
            scale=args.query_pre_attn_scalar**-0.5, qk_norm_eps=eps, norm_unit_offset=True,
            sliding_window=args.sliding_window if self.is_sliding else None,
        )
        self.post_attn_norm = RMSNorm(args.hidden_size, eps, unit_offset=True)
        self.mlp_norm = RMSNorm(args.hidden_size, eps, unit_offset=True)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act)
        self.post_mlp_norm = RMSNorm(args.hidden_size, eps, unit_offset=True)

    def forward(self, x, rope, layer: int, step: ForwardStep, cache: KVCache) -> torch.Tensor:
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), rope, layer, step, cache))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Model(nn.Module):
    """tokens (B, T) at positions (B, T) -> logits (B, T or 1, V)."""

    def __init__(self, args: Args):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args, kind) for kind in args.layer_types)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, unit_offset=True)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.rotary = Rotary(torch.empty(args.head_dim // 2))
        self.local_rotary = Rotary(torch.empty(args.head_dim // 2))

    def reset_buffers(self, device: torch.device | str) -> None:
        args = self.args
        self.rotary = Rotary(rope_inv_freq(args.head_dim, args.rope_theta, args.rope_scaling)).to(device)
        self.local_rotary = Rotary(rope_inv_freq(args.head_dim, args.rope_local_theta, None)).to(device)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.args.tie_word_embeddings else self.lm_head.weight

    def forward(self, tokens: torch.Tensor, step: ForwardStep, cache: KVCache, *, last_only: bool = True
                ) -> torch.Tensor:
        x = self.embed(tokens)  # (B, T, C)
        x = x * torch.tensor(math.sqrt(self.args.hidden_size), dtype=x.dtype)
        global_rope = self.rotary(step.positions, x.dtype)
        local_rope = self.local_rotary(step.positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, local_rope if layer.is_sliding else global_rope, i, step, cache)
        logits = logits_of(self.norm(x), self.output_weight, last_only)
        if self.args.final_logit_softcapping:
            cap = self.args.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits


def args_from_gguf(meta: dict[str, Any], vocab_size: int) -> Args:
    """Args from a GGUF header (keys without `gemma3.`), with llama.cpp's fixed layer pattern."""
    n_layers = meta["block_count"]
    head_dim = meta.get("attention.key_length", 256)
    scaling = None
    if meta.get("rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": meta["rope.scaling.factor"]}
    return Args(
        vocab_size=vocab_size,
        hidden_size=meta["embedding_length"],
        intermediate_size=meta["feed_forward_length"],
        n_layers=n_layers,
        n_heads=meta["attention.head_count"],
        n_kv_heads=meta.get("attention.head_count_kv", meta["attention.head_count"]),
        head_dim=head_dim,
        rms_norm_eps=meta.get("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=meta.get("rope.freq_base", 1_000_000.0),
        rope_scaling=scaling,
        query_pre_attn_scalar=head_dim,
        sliding_window=meta.get("attention.sliding_window", 4096),
        layer_types=default_layer_types(n_layers, LLAMA_CPP_SLIDING_PATTERN),
        max_position_embeddings=meta.get("context_length", 32768),
    )


def gguf_metadata(args: Args) -> dict[str, Any]:
    """The `gemma3.` header keys; refuses what llama.cpp would silently compute differently."""
    if args.layer_types != default_layer_types(args.n_layers, LLAMA_CPP_SLIDING_PATTERN):
        raise ModelRefused("llama.cpp runs Gemma 3 with every 6th layer global; this checkpoint differs.")
    if args.rope_local_theta != LLAMA_CPP_LOCAL_ROPE_THETA or args.query_pre_attn_scalar != args.head_dim:
        raise ModelRefused("llama.cpp assumes a local rope base of 10000 and query scaling by head_dim.")
    meta = {
        **weights.shape_metadata(args),
        "attention.layer_norm_rms_epsilon": args.rms_norm_eps,
        "attention.key_length": args.head_dim,
        "attention.value_length": args.head_dim,
        "attention.sliding_window": args.sliding_window,
        "rope.freq_base": args.rope_theta,
    }
    scaling = args.rope_scaling or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        meta["rope.scaling.type"] = "linear"
        meta["rope.scaling.factor"] = float(scaling["factor"])
    return meta
