"""GGUF files on the torch engine: weights dequantized with the `gguf` package, llama.cpp's
conversion transforms undone (permuted Q/K rows, Gemma's stored `1 + weight` norms), and the
tokenizer rebuilt from the file's own vocabulary. The header and its metadata, arrays included, come from
`formats.read_gguf_header`, which validates the file first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.engine.base import ModelRefused
from inference.engine.formats import GGUFHeader, GGUFTensorInfo, read_gguf_header
from inference.engine.torch.loader import LoadedWeights, build_model, pick_device_and_dtype
from inference.engine.torch.models import architecture_for_gguf
from inference.engine.torch.tokenizer import TextTokenizer


def dequantized(path: str | Path, header: GGUFHeader, tensor: GGUFTensorInfo) -> torch.Tensor:
    """A GGUF tensor as fp32, in PyTorch's (rows, columns) order."""
    import gguf

    qtype = gguf.GGMLQuantizationType[tensor.ggml_type]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_offset + tensor.offset,
                    shape=(tensor.n_bytes,))
    row_length = tensor.shape[0]  # GGUF lists dimensions innermost first
    rows = tensor.n_elements // row_length
    values = gguf.quants.dequantize(raw.reshape(rows, tensor.n_bytes // rows), qtype)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy


def load_gguf_model(path: str | Path, *, device: str | None = None, dtype: str | None = None
                    ) -> tuple[LoadedWeights, TextTokenizer, dict[str, Any]]:
    header = read_gguf_header(path, with_arrays=True)
    values = header.fields
    arch_name = values.get("general.architecture", "")
    arch = architecture_for_gguf(arch_name)
    prefix = f"{arch_name}."
    meta = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    tokenizer = TextTokenizer.from_gguf_vocab(values)
    by_name = {t.name: t for t in header.tensors}
    if "token_embd.weight" not in by_name:
        raise ModelRefused(f"{Path(path).name} has no token_embd.weight tensor.")
    vocab_size = int(by_name["token_embd.weight"].shape[-1])
    args = arch.args_from_gguf(meta, vocab_size)
    if hasattr(args, "tie_word_embeddings"):
        args.tie_word_embeddings = "output.weight" not in by_name
    if "rope_freqs.weight" in by_name:  # Llama 3 rope scaling, stored as per-frequency divisors
        factors = dequantized(path, header, by_name["rope_freqs.weight"]).tolist()
        args.rope_scaling = {"rope_type": "freq_factors", "factors": factors}
    device_, dtype_ = pick_device_and_dtype(device, dtype)

    def tensors():
        for name in arch.weight_names(args):
            if name.gguf not in by_name:
                raise ModelRefused(f"The GGUF file lacks tensor {name.gguf!r}.")
            yield name.ours, arch.from_gguf(name.ours, dequantized(path, header, by_name[name.gguf]), args)

    model = build_model(arch, args, tensors(), device=device_, dtype=dtype_)
    return LoadedWeights(model, arch, args, dtype_, device_), tokenizer, values
