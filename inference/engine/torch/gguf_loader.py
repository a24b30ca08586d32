"""GGUF files on the torch engine: weights dequantized with the `gguf` package, llama.cpp's
conversion transforms undone (permuted Q/K rows, Gemma's stored `1 + weight` norms), and the
tokenizer rebuilt from the file's own vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.engine.base import ModelRefused
from inference.engine.torch.loader import LoadedWeights, build_model, pick_device_and_dtype
from inference.engine.torch.models import architecture_for_gguf
from inference.engine.torch.tokenizer import TextTokenizer


def read_gguf(path: str | Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path), "r")
    except (ValueError, OSError, KeyError) as exc:
        raise ModelRefused(f"{path} is not a readable GGUF file: {exc}") from exc


def gguf_header(reader) -> dict[str, Any]:
    """Every metadata key with its plain Python value (strings, numbers, lists)."""
    return {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _field_value(field) -> Any:
    import gguf

    kind = field.types[0] if field.types else None
    if kind == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")
    value = field.parts[-1].tolist()[0]
    return bool(value) if kind == gguf.GGUFValueType.BOOL else value


def dequantized(tensor) -> torch.Tensor:
    """A GGUF tensor as fp32, in PyTorch's (rows, columns) order."""
    import gguf

    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))


def load_gguf_model(path: str | Path, *, device: str | None = None, dtype: str | None = None
                    ) -> tuple[LoadedWeights, TextTokenizer, dict[str, Any]]:
    reader = read_gguf(path)
    header = gguf_header(reader)
    arch_name = header.get("general.architecture", "")
    arch = architecture_for_gguf(arch_name)
    prefix = f"{arch_name}."
    meta = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
    tokenizer = TextTokenizer.from_gguf_vocab(header)
    by_name = {t.name: t for t in reader.tensors}
    vocab_size = int(by_name["token_embd.weight"].shape[-1]) if "token_embd.weight" in by_name else len(
        header.get("tokenizer.ggml.tokens") or [])
    args = arch.args_from_gguf(meta, vocab_size)
    if hasattr(args, "tie_word_embeddings"):
        args.tie_word_embeddings = "output.weight" not in by_name
    if "rope_freqs.weight" in by_name:  # Llama 3 rope scaling, stored as per-frequency divisors
        args.rope_scaling = {"rope_type": "freq_factors", "factors": dequantized(by_name["rope_freqs.weight"]).tolist()}
    device_, dtype_ = pick_device_and_dtype(device, dtype)

    def tensors():
        for name in arch.weight_names(args):
            if name.gguf not in by_name:
                raise ModelRefused(f"The GGUF file lacks tensor {name.gguf!r}.")
            yield name.ours, arch.from_gguf(name.ours, dequantized(by_name[name.gguf]), args)

    model = build_model(arch, args, tensors(), device=device_, dtype=dtype_)
    return LoadedWeights(model, arch, args, dtype_, device_), tokenizer, header
