"""What a model is, read from its headers: architecture, size, quantization, context, chat template.

Everything comes from `formats`' readers (the GGUF header, config.json, the safetensors headers and the
shard index) and `chat_template.find_chat_template` (the template files); nothing here parses a file
itself, and no weights are read.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gguf import LlamaFileType

from inference.engine.base import ModelRefused
from inference.engine.chat_template import find_chat_template
from inference.engine.formats import (
    FORMAT_GGUF,
    FORMAT_HF,
    FORMAT_MLX,
    GGUFHeader,
    SafetensorsTensorInfo,
    detect_format,
    read_gguf_header,
    read_hf_config,
    read_hf_weight_headers,
)

# safetensors dtype -> the short name people use for an unquantized checkpoint
_DTYPE_NAMES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "F64": "f64", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}
_TORCH_DTYPE_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64"}


@dataclass(frozen=True)
class ModelMetadata:
    format: str  # "gguf" | "hf-safetensors" | "mlx"
    architecture: str  # GGUF general.architecture, config.json model_type
    name: str
    parameter_count: int  # every tensor's element count summed (mlx-packed 4/8-bit weights unpacked)
    quantization: str  # "Q4_K_M", "F32" (GGUF); "bf16" (HF); "4-bit" (MLX)
    context_length: int | None  # what the model was trained for; None when the files do not say
    chat_template: str | None
    size_bytes: int  # on disk: the file, or everything in the directory

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template and self.chat_template.strip())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "has_chat_template": self.has_chat_template}


def read_metadata(path: str | Path, fmt: str | None = None) -> ModelMetadata:
    """Metadata of a GGUF file or a Hugging Face / MLX directory; validates the headers on the way."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == FORMAT_GGUF:
        return _gguf_metadata(path)
    if fmt in (FORMAT_HF, FORMAT_MLX):
        return _directory_metadata(path, fmt)
    raise ModelRefused(f"Unknown model format {fmt!r}.")


# --- GGUF -----------------------------------------------------------------------------------------


def _gguf_metadata(path: Path) -> ModelMetadata:
    header = read_gguf_header(path)
    fields = header.fields
    architecture = _string_field(fields, "general.architecture")
    if not architecture:
        raise ModelRefused(f"{path.name} has no general.architecture, so llama.cpp cannot load it.")
    return ModelMetadata(
        format=FORMAT_GGUF,
        architecture=architecture,
        name=_string_field(fields, "general.name") or path.stem,
        parameter_count=sum(t.n_elements for t in header.tensors),
        quantization=_gguf_quantization(header),
        context_length=_positive_int(fields.get(f"{architecture}.context_length")),
        chat_template=find_chat_template(str(path), _string_field(fields, "tokenizer.chat_template"))[0],
        size_bytes=path.stat().st_size,
    )


def _gguf_quantization(header: GGUFHeader) -> str:
    """general.file_type's name ("Q4_K_M"); without it, the type holding most of the weights."""
    file_type = header.fields.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    bytes_by_type: Counter[str] = Counter()
    for tensor in header.tensors:
        bytes_by_type[tensor.ggml_type] += tensor.n_bytes
    return bytes_by_type.most_common(1)[0][0] if bytes_by_type else "unknown"


def _string_field(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    return value if isinstance(value, str) else ""


# --- Hugging Face and MLX directories -------------------------------------------------------------


def _directory_metadata(directory: Path, fmt: str) -> ModelMetadata:
    config = read_hf_config(directory)
    headers = read_hf_weight_headers(directory)
    tensors = [t for header in headers.values() for t in header.tensors.values()]
    return ModelMetadata(
        format=fmt,
        architecture=config["model_type"],
        name=_directory_model_name(directory, config),
        parameter_count=_directory_parameter_count(config, tensors),
        quantization=_directory_quantization(config, tensors),
        context_length=_config_context_length(config),
        chat_template=find_chat_template(str(directory))[0],
        size_bytes=_directory_size(directory),
    )


def _directory_model_name(directory: Path, config: dict[str, Any]) -> str:
    """The last part of config.json's _name_or_path ("org/model" or a local path), else the directory's."""
    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path.strip("/ "):
        return name_or_path.strip("/ ").rsplit("/", 1)[-1]
    return directory.resolve().name


def _directory_parameter_count(config: dict[str, Any], tensors: list[SafetensorsTensorInfo]) -> int:
    """Element counts summed; an mlx-quantized weight packs 32 // bits values into each uint32 element,
    and its per-group `scales` and `biases` are not parameters."""
    quantization = config.get("quantization")
    bits = quantization.get("bits") if isinstance(quantization, dict) else None
    if not isinstance(bits, int) or not 0 < bits <= 32:
        return sum(t.n_elements for t in tensors)
    names = {t.name for t in tensors}
    count = 0
    for tensor in tensors:
        stem, _, kind = tensor.name.rpartition(".")
        is_quantized = f"{stem}.scales" in names
        if is_quantized and kind in ("scales", "biases"):
            continue
        count += tensor.n_elements * 32 // bits if is_quantized and kind == "weight" else tensor.n_elements
    return count


def _directory_quantization(config: dict[str, Any], tensors: list[SafetensorsTensorInfo]) -> str:
    for key in ("quantization", "quantization_config"):
        quantization = config.get(key)
        if not isinstance(quantization, dict):
            continue
        bits = quantization.get("bits")
        method = quantization.get("quant_method")
        if isinstance(method, str) and method:
            return f"{method} {bits}-bit" if isinstance(bits, int) else method
        if isinstance(bits, int):
            return f"{bits}-bit"
    dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(dtype, str) and dtype in _TORCH_DTYPE_NAMES:
        return _TORCH_DTYPE_NAMES[dtype]
    bytes_by_dtype: Counter[str] = Counter()
    for tensor in tensors:
        bytes_by_dtype[tensor.dtype] += tensor.data_offsets[1] - tensor.data_offsets[0]
    if not bytes_by_dtype:
        return "unknown"
    dominant = bytes_by_dtype.most_common(1)[0][0]
    return _DTYPE_NAMES.get(dominant, dominant.lower())


def _config_context_length(config: dict[str, Any]) -> int | None:
    for source in (config, config.get("text_config")):
        if not isinstance(source, dict):
            continue
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
            value = _positive_int(source.get(key))
            if value:
                return value
    return None


def _directory_size(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):  # does not descend into symlinked directories
        for file_name in files:
            try:
                total += (Path(root) / file_name).stat().st_size  # follows the hub cache's blob symlinks
            except OSError:
                continue
    return total


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


__all__ = ["ModelMetadata", "read_metadata"]
