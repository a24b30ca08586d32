"""Hugging Face safetensors -> GGUF, for llama.cpp.

Tensors go through the same weight map the torch engine loads with (`models/<arch>.py`), plus
llama.cpp's transforms (permuted Q/K rows for "llama", `1 + weight` norms for Gemma). f32 and f16
files are written by the `gguf` package, one tensor at a time; q8_0 and q4_k_m are quantized from
an f16 file by llama.cpp's own quantizer (`llama_model_quantize`, bundled with llama-cpp-python).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from inference.engine.base import ModelRefused
from inference.engine.formats import read_hf_config, read_json_object

OUT_TYPES = ("f32", "f16", "q8_0", "q4_k_m")
# llama.cpp's llama_ftype values
LLAMA_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}

# Architectures llama.cpp runs that the torch engine does not: converted with their own small tensor map.
CONVERTER_ONLY = {"olmo": "inference.engine.convert_olmo"}

# GGUF token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def convert_hf_to_gguf(src_dir: str | Path, dst_path: str | Path, out_type: str = "f16",
                       progress: Callable[[float], None] = lambda fraction: None) -> Path:
    """Write the checkpoint in `src_dir` as one GGUF file at `dst_path`; `progress` gets 0.0 .. 1.0."""
    if out_type not in OUT_TYPES:
        raise ModelRefused(f"Unknown GGUF type {out_type!r}: choose one of {', '.join(OUT_TYPES)}.")
    src_dir, dst_path = Path(src_dir), Path(dst_path)
    config = read_hf_config(src_dir)
    arch = converter_for(config.get("model_type", ""))
    args = arch.Args.from_config(config)
    metadata = arch.gguf_metadata(args)  # refuses what llama.cpp cannot run faithfully
    tmp_path = dst_path.with_name(dst_path.name + ".partial")
    try:
        if out_type in ("f32", "f16"):
            _write_gguf(src_dir, tmp_path, arch, args, config, metadata, out_type, progress)
        else:
            f16_path = dst_path.with_name(dst_path.name + ".f16.partial")
            try:
                _write_gguf(src_dir, f16_path, arch, args, config, metadata, "f16", lambda f: progress(0.5 * f))
                _quantize(f16_path, tmp_path, out_type)
            finally:
                f16_path.unlink(missing_ok=True)
        os.replace(tmp_path, dst_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    progress(1.0)
    return dst_path


def converter_for(model_type: str):
    """The architecture module that maps `model_type`'s tensors to GGUF: the torch engine's, or a converter-only one."""
    import importlib

    from inference.engine.torch.models import MODEL_TYPES, architecture_for

    if model_type in CONVERTER_ONLY:
        return importlib.import_module(CONVERTER_ONLY[model_type])
    if model_type in MODEL_TYPES:
        return architecture_for(model_type)
    known = ", ".join(sorted({*MODEL_TYPES, *CONVERTER_ONLY}))
    raise ModelRefused(f"The GGUF converter does not know model_type {model_type!r}; it converts {known}.")


def can_convert(model_type: str) -> bool:
    from inference.engine.torch.models import MODEL_TYPES

    return model_type in CONVERTER_ONLY or model_type in MODEL_TYPES


def _write_gguf(src_dir: Path, path: Path, arch, args, config: dict[str, Any], metadata: dict[str, Any],
                out_type: str, progress: Callable[[float], None]) -> None:
    import gguf
    import torch

    from inference.engine.torch.loader import _find_key, open_checkpoint
    from inference.engine.torch.models.layers import llama3_rope_factors

    writer = gguf.GGUFWriter(str(path), arch.GGUF_ARCH)
    writer.add_name(src_dir.name)
    writer.add_file_type(LLAMA_FTYPES[out_type])
    for key, value in metadata.items():
        _add_value(writer, f"{arch.GGUF_ARCH}.{key}", value)
    _add_tokenizer(writer, src_dir, config, args.vocab_size)

    extra: dict[str, torch.Tensor] = {}
    scaling = getattr(args, "rope_scaling", None) or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "llama3":
        extra["rope_freqs.weight"] = llama3_rope_factors(args.head_dim, args.rope_theta, scaling)

    aliases = getattr(arch, "HF_PREFIX_ALIASES", ())
    names = arch.weight_names(args)
    with ExitStack() as stack:
        where = open_checkpoint(stack, src_dir)
        keys = [_find_key(n.hf, where, aliases) for n in names]

        def converted(i: int) -> np.ndarray:
            tensor = arch.to_gguf(names[i].ours, where[keys[i]].get_tensor(keys[i]).float(), args)
            return _as_stored(tensor.numpy(), out_type)

        shapes = [tuple(where[k].get_slice(k).get_shape()) for k in keys]
        for name, shape in zip(names, shapes, strict=True):
            stored = np.float16 if out_type == "f16" and len(shape) > 1 else np.float32
            writer.add_tensor_info(name.gguf, shape, np.dtype(stored), int(np.prod(shape)) * np.dtype(stored).itemsize)
        for name, tensor in extra.items():
            writer.add_tensor_info(name, tuple(tensor.shape), np.dtype(np.float32), tensor.numel() * 4)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i in range(len(names)):
            writer.write_tensor_data(converted(i))
            progress((i + 1) / (len(names) + 1))
        for tensor in extra.values():
            writer.write_tensor_data(tensor.numpy().astype(np.float32))
    writer.close()


def _as_stored(array: np.ndarray, out_type: str) -> np.ndarray:
    """f16 for matrices when asked; vectors (norms, biases) stay f32 as llama.cpp expects."""
    if out_type == "f16" and array.ndim > 1:
        return array.astype(np.float16)
    return array.astype(np.float32)


def _add_value(writer, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        raise TypeError(f"No GGUF type for {key}={value!r}")


def _quantize(src: Path, dst: Path, out_type: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[out_type]
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise ModelRefused(f"llama.cpp could not quantize the model to {out_type} (status {status}).")


# ---------------------------------------------------------------------------------------------------------
# The vocabulary, from tokenizer.json into GGUF's tokenizer.ggml.* keys


def _add_tokenizer(writer, src_dir: Path, config: dict[str, Any], vocab_size: int) -> None:
    from inference.engine.chat_template import find_chat_template

    spec = read_json_object(src_dir / "tokenizer.json", "The tokenizer's") or {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ModelRefused("Only BPE tokenizers (tokenizer.json model type BPE) can be converted to GGUF.")
    tokenizer_config = read_json_object(src_dir / "tokenizer_config.json", "The tokenizer's") or {}
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    for token_id, token in added.items():
        vocab[token["content"]] = token_id
    size = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, token_id in vocab.items():
        tokens[token_id] = text
        types[token_id] = NORMAL
    unk = model.get("unk_token")
    sentencepiece_like = bool(model.get("byte_fallback"))
    for token_id, text in enumerate(tokens):
        if token_id in added:
            types[token_id] = CONTROL if added[token_id].get("special") else USER_DEFINED
        elif text == unk:
            types[token_id] = UNKNOWN
        elif sentencepiece_like and BYTE_TOKEN.match(text):
            types[token_id] = BYTE
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    if sentencepiece_like:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(_scores_from_merges(tokens, merges))
        writer.add_add_space_prefix(_prepends_space(spec))
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_byte_level_pre(spec))
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    def token_id(name: str) -> int | None:
        value = tokenizer_config.get(name)
        text = value.get("content") if isinstance(value, dict) else value
        return vocab.get(text) if isinstance(text, str) else None

    bos, eos, pad = token_id("bos_token"), token_id("eos_token"), token_id("pad_token")
    eos = eos if eos is not None else _first_int(config.get("eos_token_id"))
    bos = bos if bos is not None else _first_int(config.get("bos_token_id"))
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if pad is not None:
        writer.add_pad_token_id(pad)
    if unk in vocab:
        writer.add_unk_token_id(vocab[unk])
    add_bos = tokenizer_config.get("add_bos_token")
    if add_bos is None:
        add_bos = _post_processor_adds(spec, tokens[bos]) if bos is not None else False
    writer.add_add_bos_token(bool(add_bos))
    writer.add_add_eos_token(bool(tokenizer_config.get("add_eos_token", False)))
    template, _source = find_chat_template(str(src_dir))
    if template:
        writer.add_chat_template(template)


def _scores_from_merges(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores from BPE merge ranks: a piece made by an earlier merge scores higher."""
    scores = [0.0] * len(tokens)
    index = {t: i for i, t in enumerate(tokens)}
    for rank, merge in enumerate(merges):
        merged = merge.replace(" ", "", 1)
        if merged in index and scores[index[merged]] == 0.0:
            scores[index[merged]] = -float(rank + 1)
    return scores


def _prepends_space(spec: dict[str, Any]) -> bool:
    return '"Prepend"' in json.dumps(spec.get("normalizer")) or '"prepend_scheme": "always"' in json.dumps(
        spec.get("pre_tokenizer"))


def _byte_level_pre(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer regex; plain ByteLevel is GPT-2's."""
    from inference.engine.torch.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT

    text = json.dumps(spec.get("pre_tokenizer"))
    if json.dumps(LLAMA3_SPLIT)[1:-1] in text:
        return "llama-bpe"
    if json.dumps(QWEN2_SPLIT)[1:-1] in text:
        return "qwen2"
    return "gpt-2" if '"ByteLevel"' in text else "default"


def _post_processor_adds(spec: dict[str, Any], bos: str) -> bool:
    return json.dumps(bos) in json.dumps(spec.get("post_processor"))


def _first_int(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None
