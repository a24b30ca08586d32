"""GGUF files on the torch engine: weights dequantized with the `gguf` package, llama.cpp's
conversion transforms undone (permuted Q/K rows, Gemma's stored `1 + weight` norms), and the
tokenizer rebuilt from the file's own vocabulary."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.engine.base import ModelRefused
from inference.engine.formats import GGUFHeader, GGUFTensorInfo, read_gguf_header
from inference.engine.torch.loader import LoadedWeights, build_model, pick_device_and_dtype
from inference.engine.torch.models import architecture_for_gguf
from inference.engine.torch.tokenizer import TextTokenizer

_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
            11: "<i8", 12: "<f8"}  # GGUF value type -> numpy dtype
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def read_gguf(path: str | Path) -> tuple[GGUFHeader, dict[str, Any]]:
    """The validated header (formats.read_gguf_header refuses corrupt files) and every metadata
    value, arrays (the vocabulary) included."""
    header = read_gguf_header(path)
    values = dict(header.fields)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        values.update(_read_arrays(buffer))
    return header, values


def _read_arrays(buffer) -> dict[str, list]:
    """Walk the (already validated) key/value section and decode the arrays."""
    n_keys = _U64.unpack_from(buffer, 16)[0]
    pos, arrays = 24, {}

    def string(at: int) -> tuple[bytes, int]:
        length = _U64.unpack_from(buffer, at)[0]
        return buffer[at + 8 : at + 8 + length], at + 8 + length

    def skip_scalar_or_string(kind: int, at: int) -> int:
        return string(at)[1] if kind == _STRING else at + np.dtype(_SCALARS[kind]).itemsize

    for _ in range(n_keys):
        key, pos = string(pos)
        kind = _U32.unpack_from(buffer, pos)[0]
        pos += 4
        if kind != _ARRAY:
            pos = skip_scalar_or_string(kind, pos)
            continue
        element, length = _U32.unpack_from(buffer, pos)[0], _U64.unpack_from(buffer, pos + 4)[0]
        pos += 12
        if element == _STRING:
            items = []
            for _ in range(length):
                raw, pos = string(pos)
                items.append(raw.decode("utf-8", errors="replace"))
        else:
            dtype = np.dtype(_SCALARS[element])
            items = np.frombuffer(buffer, dtype=dtype, count=length, offset=pos).tolist()
            pos += dtype.itemsize * length
        arrays[key.decode("utf-8", errors="replace")] = items
    return arrays


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
    header, values = read_gguf(path)
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
