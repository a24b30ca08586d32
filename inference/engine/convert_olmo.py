"""OLMo (1) for the GGUF converter only: llama.cpp runs it, the torch engine does not.

OLMo is Llama's layout without norm weights: its layer norms have no parameters (llama.cpp's "olmo" graph
normalises with none), and `clip_qkv` clamps the projections. So the tensors are Llama's minus the norms,
with the same Q/K row permutation for llama.cpp's rope (as llama.cpp's own convert_hf_to_gguf.py does).
"""

from __future__ import annotations

from typing import Any

from inference.engine.base import ModelRefused
from inference.engine.torch.models import llama, weights

GGUF_ARCH = "olmo"
LAYER_NORM_EPS = 1e-5  # OLMo's parameter-free layer norm

GLOBAL_WEIGHTS = {
    "embed.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "lm_head.weight": ("lm_head.weight", "output.weight"),
}
LAYER_WEIGHTS = {name: pair for name, pair in llama.LAYER_WEIGHTS.items() if "norm" not in name}


class Args(llama.Args):
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Args:
        args = super().from_config(config)
        args.extra["clip_qkv"] = config.get("clip_qkv")
        return args


def weight_names(args: Args) -> list[weights.WeightName]:
    return weights.expand(GLOBAL_WEIGHTS, LAYER_WEIGHTS, args.n_layers, tied_embeddings=args.tie_word_embeddings)


to_gguf = llama.to_gguf  # the same Q/K row permutation


def gguf_metadata(args: Args) -> dict[str, Any]:
    if args.attention_bias:
        raise ModelRefused("This OLMo checkpoint has attention biases, which llama.cpp's olmo graph lacks.")
    if args.rope_scaling:
        raise ModelRefused("This OLMo checkpoint scales its rope, which the converter does not carry over.")
    meta = {
        **weights.shape_metadata(args),
        "attention.layer_norm_epsilon": LAYER_NORM_EPS,
        "rope.dimension_count": args.head_dim,
        "rope.freq_base": args.rope_theta,
        "vocab_size": args.vocab_size,
    }
    if args.extra.get("clip_qkv") is not None:
        meta["attention.clamp_kqv"] = float(args.extra["clip_qkv"])
    return meta
