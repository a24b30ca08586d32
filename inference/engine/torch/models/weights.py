"""Weight-name maps: one table per architecture, shared by the loaders and the GGUF converter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightName:
    """One tensor's name in our module, in a Hugging Face checkpoint and in a GGUF file."""

    ours: str
    hf: str
    gguf: str


def expand(global_weights: dict[str, tuple[str, str]], layer_weights: dict[str, tuple[str, str]],
           n_layers: int, *, tied_embeddings: bool = False,
           hf_layer_prefix: str = "model.layers.{i}.") -> list[WeightName]:
    """Spell out the tables: `{"norm.weight": (hf, gguf)}` once, and each layer's entries per layer. With tied
    embeddings there is no separate `lm_head.weight` to read."""
    names = [WeightName(ours, hf, gguf) for ours, (hf, gguf) in global_weights.items()
             if not (tied_embeddings and ours == "lm_head.weight")]
    for i in range(n_layers):
        for ours, (hf, gguf) in layer_weights.items():
            names.append(WeightName(f"layers.{i}.{ours}", hf_layer_prefix.format(i=i) + hf, f"blk.{i}.{gguf}"))
    return names


def shape_metadata(args) -> dict:
    """The GGUF `<arch>.` keys every decoder architecture writes alike: its context and its sizes."""
    return {
        "context_length": args.max_position_embeddings,
        "embedding_length": args.hidden_size,
        "block_count": args.n_layers,
        "feed_forward_length": args.intermediate_size,
        "attention.head_count": args.n_heads,
        "attention.head_count_kv": args.n_kv_heads,
    }


def permute_for_gguf(weight, n_heads: int):
    """llama.cpp's reordering of Q/K rows for its interleaved rope: (H*D, C) rows, per head,
    from halves [0..D/2 | D/2..D] to pairs (0, D/2), (1, D/2+1)... Works on tensors and arrays."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_from_gguf(weight, n_heads: int):
    """The inverse of `permute_for_gguf`: back to the Hugging Face rotate-half layout."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
