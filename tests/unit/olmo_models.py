"""A tiny OLMo (1) checkpoint: an architecture llama.cpp runs and the torch engine does not."""

from __future__ import annotations

import json
from pathlib import Path

from tests.factories import build_tiny_hf_dir


def build_tiny_olmo_dir(path: str | Path) -> Path:
    """The tiny llama layout without norm weights (OLMo's layer norms have none), clip_qkv set."""
    from safetensors.numpy import load_file, save_file

    directory = build_tiny_hf_dir(path, context_length=512)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="olmo", architectures=["OlmoForCausalLM"], clip_qkv=8.0)
    (directory / "config.json").write_text(json.dumps(config))
    weights = load_file(directory / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "norm" not in k}, directory / "model.safetensors", {"format": "pt"})
    return directory
