"""Which kind of model a path holds, decided from its bytes, and the header checks behind that answer.

`detect_format(path)` returns "gguf", "hf-safetensors" or "mlx", or raises `ModelRefused` saying what
the path is and what to do instead. Model files are untrusted: every header is parsed here by our own
bounds-checked readers before any library (llama.cpp, gguf, safetensors) is allowed to open the file,
and nothing is ever unpickled. These are the only readers of those headers and of a model directory's
JSON files (`read_hf_config`, `read_json_object`): loaders, converters and metadata all use them.

    GGUF file        magic "GGUF", version 2 or 3, header parsed end to end (`read_gguf_header`)
    Hugging Face dir config.json with model_type + safetensors weights + tokenizer.json/tokenizer.model,
                     every safetensors header validated (`read_safetensors_header`), the shard index
                     checked against them (`read_shard_index`, `hf_weight_files`)
    MLX dir          a Hugging Face dir whose config carries mlx-style quantization, or whose
                     safetensors metadata says {"format": "mlx"}
"""

from __future__ import annotations

import json
import mmap
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inference.engine.base import ModelRefused

FORMAT_GGUF = "gguf"
FORMAT_HF = "hf-safetensors"
FORMAT_MLX = "mlx"

GGUF_MAGIC = b"GGUF"
GGUF_SUPPORTED_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
MAX_GGUF_TENSORS = 65_536
MAX_GGUF_KEYS = 65_536
MAX_GGUF_STRING_BYTES = 16 * 1024 * 1024  # a long chat template is ~20 KB
MAX_GGUF_ARRAY_LENGTH = 16 * 1024 * 1024  # vocabularies and merge lists stay well below this
MAX_GGUF_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_GGUF_TENSOR_NAME_BYTES = 63  # GGML_MAX_NAME is 64 with the terminating NUL
MAX_TENSOR_ELEMENTS = 2**62

MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_FILE_BYTES = 50 * 1024 * 1024  # config.json, tokenizer files, chat_template.json, the shard index

SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
SAFETENSORS_INDEX = "model.safetensors.index.json"

UNPICKLE_ADVICE = (
    "Hearth never unpickles model files; convert it to safetensors (for example with the "
    "`convert` tool of the model's publisher or transformers' `save_pretrained(safe_serialization=True)`) "
    "on a trusted machine, or download the safetensors or GGUF version of the model"
)


def detect_format(path: str | Path) -> str:
    """The format of a model we can load ("gguf", "hf-safetensors" or "mlx"); ModelRefused otherwise."""
    path = Path(path)
    if path.is_dir():
        return _detect_directory_format(path)
    if not path.is_file():
        raise ModelRefused(f"{path} does not exist or is not a regular file or directory.")
    size = path.stat().st_size
    if size == 0:
        raise ModelRefused(f"{path.name} is empty (0 bytes); the download or copy probably failed.")
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(GGUF_MAGIC):
        _check_gguf_is_a_model(read_gguf_header(path), path.name)
        return FORMAT_GGUF
    raise ModelRefused(_describe_unusable_file(path, head, size))


# --- GGUF -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array, summarised: its element type and length (the elements are not kept)."""

    element_type: str
    length: int


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: innermost (fastest-varying) dimension first
    ggml_type: str  # "F32", "Q4_K", ...
    offset: int  # from the start of the data section
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]  # scalars and strings as values, arrays as GGUFArray (lists when read with_arrays)
    tensors: tuple[GGUFTensorInfo, ...]
    alignment: int
    data_offset: int  # where tensor data starts in the file
    file_size: int


class _GGUFValueType:
    """The GGUF spec's metadata value types (gguf.GGUFValueType, restated so the parser owns its limits)."""

    UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32 = range(7)
    BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(7, 13)


_GGUF_SCALAR_FORMATS = {
    _GGUFValueType.UINT8: "<B", _GGUFValueType.INT8: "<b",
    _GGUFValueType.UINT16: "<H", _GGUFValueType.INT16: "<h",
    _GGUFValueType.UINT32: "<I", _GGUFValueType.INT32: "<i",
    _GGUFValueType.UINT64: "<Q", _GGUFValueType.INT64: "<q",
    _GGUFValueType.FLOAT32: "<f", _GGUFValueType.FLOAT64: "<d",
    _GGUFValueType.BOOL: "<B",
}  # fmt: skip
_GGUF_VALUE_TYPE_NAMES = (
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
)  # fmt: skip


class _Cursor:
    """Reads little-endian values from a memory-mapped file; every read is checked against its end."""

    def __init__(self, buffer: mmap.mmap, name: str, with_arrays: bool = False):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.name = name
        self.with_arrays = with_arrays  # decode arrays into lists rather than summarise them

    def take(self, n_bytes: int, what: str) -> int:
        """Advance over n_bytes, returning where they start."""
        if n_bytes < 0 or self.pos + n_bytes > self.size:
            raise ModelRefused(
                f"{self.name} is truncated or corrupt: its {what} at byte {self.pos} runs past the end of "
                f"the file ({self.size} bytes). Download it again."
            )
        start = self.pos
        self.pos += n_bytes
        return start

    def unpack(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buffer, start)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def string_bytes(self, what: str, max_bytes: int = MAX_GGUF_STRING_BYTES) -> bytes:
        length = self.u64(f"{what} length")
        if length > max_bytes:
            raise ModelRefused(
                f"{self.name} is corrupt: {what} claims {length:,} bytes (the limit is {max_bytes:,})."
            )
        start = self.take(length, what)
        return self.buffer[start : start + length]

    def skip_string(self, what: str) -> None:
        length = self.u64(f"{what} length")
        if length > MAX_GGUF_STRING_BYTES:
            raise ModelRefused(
                f"{self.name} is corrupt: {what} claims {length:,} bytes "
                f"(the limit is {MAX_GGUF_STRING_BYTES:,})."
            )
        self.take(length, what)


def read_gguf_header(path: str | Path, *, with_arrays: bool = False) -> GGUFHeader:
    """Parse and validate a GGUF file's header without trusting any count or offset in it.

    Arrays (the vocabulary, merges, scores) are summarised as GGUFArray, or decoded into lists
    `with_arrays` (for an engine that rebuilds the tokenizer from them)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise ModelRefused(f"{path.name} is truncated: {size} bytes cannot hold a GGUF header.")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        return _parse_gguf(_Cursor(buffer, path.name, with_arrays))


def _parse_gguf(cursor: _Cursor) -> GGUFHeader:
    name = cursor.name
    if cursor.buffer[:4] != GGUF_MAGIC:
        raise ModelRefused(f"{name} is not a GGUF file (it does not start with the GGUF magic bytes).")
    cursor.take(4, "magic")
    version = cursor.u32("version")
    if version not in GGUF_SUPPORTED_VERSIONS:
        raise ModelRefused(_unsupported_gguf_version_message(name, version))
    n_tensors = cursor.u64("tensor count")
    n_keys = cursor.u64("metadata key count")
    if n_tensors > MAX_GGUF_TENSORS:
        raise ModelRefused(
            f"{name} is corrupt or hostile: its header claims {n_tensors:,} tensors "
            f"(Hearth accepts at most {MAX_GGUF_TENSORS:,})."
        )
    if n_keys > MAX_GGUF_KEYS:
        raise ModelRefused(
            f"{name} is corrupt or hostile: its header claims {n_keys:,} metadata keys "
            f"(Hearth accepts at most {MAX_GGUF_KEYS:,})."
        )

    fields: dict[str, Any] = {}
    for index in range(n_keys):
        key = _decode_utf8(cursor.string_bytes(f"metadata key #{index}", max_bytes=65_535), name, "a key")
        if key in fields:
            raise ModelRefused(f"{name} is corrupt: metadata key {key!r} appears twice.")
        fields[key] = _read_gguf_value(cursor, key)

    alignment = fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelRefused(f"{name} is corrupt: general.alignment {alignment!r} is not a power of two.")

    tensors = [_read_gguf_tensor_info(cursor, index, alignment) for index in range(n_tensors)]
    data_offset = -(-cursor.pos // alignment) * alignment  # the header end, rounded up to the alignment
    _check_gguf_tensor_data(name, tensors, data_offset, cursor.size)
    return GGUFHeader(
        version=version,
        fields=fields,
        tensors=tuple(tensors),
        alignment=alignment,
        data_offset=data_offset,
        file_size=cursor.size,
    )


def _check_gguf_is_a_model(header: GGUFHeader, name: str) -> None:
    """A valid GGUF may still be no model: a LoRA adapter, an imatrix, a vocabulary without weights."""
    kind = header.fields.get("general.type", "model")
    if kind != "model":
        raise ModelRefused(
            f"{name} is a GGUF {kind!s} file, not a model; import the base model instead."
            + (" (Hearth does not apply LoRA adapters.)" if kind == "adapter" else "")
        )
    if (
        not isinstance(header.fields.get("general.architecture"), str)
        or not header.fields["general.architecture"]
    ):
        raise ModelRefused(f"{name} has no general.architecture, so llama.cpp cannot load it.")
    if not header.tensors:
        raise ModelRefused(f"{name} holds no tensors (a vocabulary-only GGUF?), so there is no model to run.")


def _unsupported_gguf_version_message(name: str, version: int) -> str:
    if version == 1:
        return (
            f"{name} is GGUF version 1 (an early 2023 format) which Hearth does not read (versions 2 and 3 "
            "only); download a newer conversion of the model or re-convert it with a current llama.cpp."
        )
    if int.from_bytes(version.to_bytes(4, "little"), "big") in GGUF_SUPPORTED_VERSIONS:
        return (
            f"{name} is a big-endian GGUF file; Hearth reads little-endian GGUF only. "
            "Download the standard (little-endian) conversion of the model."
        )
    return (
        f"{name} has GGUF version {version}, which Hearth does not support (versions 2 and 3 only); "
        "the file is corrupt or was written by a newer tool than this Hearth understands."
    )


def _read_gguf_value(cursor: _Cursor, key: str) -> Any:
    value_type = cursor.u32(f"type of {key}")
    if value_type == _GGUFValueType.ARRAY:
        element_type = cursor.u32(f"element type of {key}")
        length = cursor.u64(f"length of {key}")
        if element_type not in _GGUF_SCALAR_FORMATS and element_type != _GGUFValueType.STRING:
            problem = "nested arrays" if element_type == _GGUFValueType.ARRAY else f"type {element_type}"
            raise ModelRefused(
                f"{cursor.name} is corrupt: array {key} holds {problem}, which Hearth does not accept."
            )
        if length > MAX_GGUF_ARRAY_LENGTH:
            raise ModelRefused(
                f"{cursor.name} is corrupt or hostile: array {key} claims {length:,} elements "
                f"(Hearth accepts at most {MAX_GGUF_ARRAY_LENGTH:,})."
            )
        start = cursor.pos
        if element_type == _GGUFValueType.STRING:
            _skip_string_array(cursor, key, length)
        else:
            cursor.take(length * struct.calcsize(_GGUF_SCALAR_FORMATS[element_type]), f"array {key}")
        if cursor.with_arrays:
            return _decode_gguf_array(cursor.buffer, start, element_type, length)
        return GGUFArray(element_type=_GGUF_VALUE_TYPE_NAMES[element_type], length=length)
    if value_type == _GGUFValueType.STRING:
        return _decode_utf8(cursor.string_bytes(f"value of {key}"), cursor.name, key, errors="replace")
    if value_type in _GGUF_SCALAR_FORMATS:
        value = cursor.unpack(_GGUF_SCALAR_FORMATS[value_type], f"value of {key}")
        return bool(value) if value_type == _GGUFValueType.BOOL else value
    raise ModelRefused(f"{cursor.name} is corrupt: metadata key {key} has unknown value type {value_type}.")


_U64 = struct.Struct("<Q")


def _skip_string_array(cursor: _Cursor, key: str, length: int) -> None:
    """Step over `length` strings, checking each one's bounds. A tight loop: vocabularies run to 262,144
    strings; any string out of bounds is re-read by `skip_string` to raise its refusal."""
    buffer, position, size = cursor.buffer, cursor.pos, cursor.size
    for i in range(length):
        string_length = _U64.unpack_from(buffer, position)[0] if position + 8 <= size else size
        if string_length > MAX_GGUF_STRING_BYTES or position + 8 + string_length > size:
            cursor.pos = position
            cursor.skip_string(f"{key}[{i}]")
        position += 8 + string_length
    cursor.pos = position


def _decode_gguf_array(buffer: mmap.mmap, start: int, element_type: int, length: int) -> list[Any]:
    """The elements of an array whose bounds the caller has already checked."""
    if element_type == _GGUFValueType.STRING:
        items, position = [], start
        for _ in range(length):
            string_length = _U64.unpack_from(buffer, position)[0]
            items.append(str(buffer[position + 8 : position + 8 + string_length], "utf-8", "replace"))
            position += 8 + string_length
        return items
    values = struct.unpack_from(f"<{length}{_GGUF_SCALAR_FORMATS[element_type][1:]}", buffer, start)
    return [bool(v) for v in values] if element_type == _GGUFValueType.BOOL else list(values)


def _read_gguf_tensor_info(cursor: _Cursor, index: int, alignment: int) -> GGUFTensorInfo:
    file_name = cursor.name
    raw_name = cursor.string_bytes(f"name of tensor #{index}", max_bytes=MAX_GGUF_TENSOR_NAME_BYTES)
    name = _decode_utf8(raw_name, file_name, f"the name of tensor #{index}")
    n_dims = cursor.u32(f"dimension count of {name}")
    if not 1 <= n_dims <= MAX_GGUF_TENSOR_DIMS:
        raise ModelRefused(f"{file_name} is corrupt: tensor {name} has {n_dims} dimensions (1 to 4 allowed).")
    shape = tuple(cursor.u64(f"dimensions of {name}") for _ in range(n_dims))
    n_elements = 1
    for dim in shape:
        if dim == 0 or dim > MAX_TENSOR_ELEMENTS // n_elements:
            raise ModelRefused(
                f"{file_name} is corrupt: tensor {name} has an impossible shape {list(shape)}."
            )
        n_elements *= dim
    type_id = cursor.u32(f"type of {name}")
    try:
        ggml_type = GGMLQuantizationType(type_id)
        block_size, block_bytes = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise ModelRefused(
            f"{file_name} uses tensor type {type_id} (tensor {name}), which this version of Hearth's "
            "GGUF support does not know; the file is corrupt or needs a newer Hearth."
        ) from None
    if shape[0] % block_size:
        raise ModelRefused(
            f"{file_name} is corrupt: tensor {name} has {shape[0]} elements per row, not a multiple of "
            f"the {ggml_type.name} block size {block_size}."
        )
    offset = cursor.u64(f"data offset of {name}")
    if offset % alignment:
        raise ModelRefused(f"{file_name} is corrupt: tensor {name}'s data offset {offset} is not aligned.")
    return GGUFTensorInfo(
        name=name,
        shape=shape,
        ggml_type=ggml_type.name,
        offset=offset,
        n_bytes=n_elements // block_size * block_bytes,
    )


def _check_gguf_tensor_data(
    name: str, tensors: list[GGUFTensorInfo], data_offset: int, file_size: int
) -> None:
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise ModelRefused(f"{name} is corrupt: tensor {tensor.name} appears twice.")
        seen.add(tensor.name)
    previous_end, previous_name = 0, ""
    for tensor in sorted(tensors, key=lambda t: t.offset):
        start = data_offset + tensor.offset
        end = start + tensor.n_bytes
        if end > file_size:
            raise ModelRefused(
                f"{name} is truncated: tensor {tensor.name} needs bytes {start:,} to {end:,} but the file has "
                f"{file_size:,} bytes. The download was probably interrupted; download it again."
            )
        if start < previous_end:
            raise ModelRefused(f"{name} is corrupt: tensors {previous_name} and {tensor.name} overlap.")
        previous_end, previous_name = end, tensor.name


def _decode_utf8(raw: bytes, file_name: str, what: str, errors: str = "strict") -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError:
        raise ModelRefused(f"{file_name} is corrupt: {what} is not valid UTF-8.") from None


# --- safetensors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsTensorInfo:
    name: str
    dtype: str  # "BF16", "F32", ...
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # [begin, end) within the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, SafetensorsTensorInfo]
    metadata: dict[str, str]  # the free-form "__metadata__" (mlx writes {"format": "mlx"})
    file_size: int


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header: sizes, dtypes and offsets all inside the file."""
    path = Path(path)
    name = path.name
    size = path.stat().st_size
    if size < 8:
        raise ModelRefused(f"{name} is truncated: {size} bytes cannot hold a safetensors header.")
    with path.open("rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        if header_length > MAX_SAFETENSORS_HEADER_BYTES:
            raise ModelRefused(
                f"{name} is corrupt: its header length field says {header_length:,} bytes "
                f"(the limit is {MAX_SAFETENSORS_HEADER_BYTES:,})."
            )
        if 8 + header_length > size:
            raise ModelRefused(
                f"{name} is truncated: its header needs {header_length:,} bytes but the file has {size:,}."
            )
        raw_header = f.read(header_length)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelRefused(f"{name} is corrupt: its safetensors header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise ModelRefused(f"{name} is corrupt: its safetensors header is not a JSON object.")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelRefused(f"{name} is corrupt: its __metadata__ is not a map of strings.")
    data_size = size - 8 - header_length
    tensors = {key: _safetensors_tensor_info(name, key, entry, data_size) for key, entry in header.items()}
    _check_safetensors_layout(name, tensors, data_size)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, file_size=size)


def _safetensors_tensor_info(file_name: str, key: str, entry: Any, data_size: int) -> SafetensorsTensorInfo:
    if not isinstance(entry, dict):
        raise ModelRefused(f"{file_name} is corrupt: the header entry for {key} is not an object.")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        raise ModelRefused(f"{file_name}: tensor {key} has unknown dtype {dtype!r}.")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelRefused(f"{file_name} is corrupt: tensor {key} has an invalid shape {shape!r}.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ModelRefused(f"{file_name} is corrupt: tensor {key} has invalid data_offsets {offsets!r}.")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise ModelRefused(
            f"{file_name} is corrupt or truncated: tensor {key}'s data_offsets [{begin}, {end}] fall outside "
            f"its {data_size:,}-byte data section."
        )
    info = SafetensorsTensorInfo(name=key, dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))
    if info.n_elements * SAFETENSORS_DTYPE_BYTES[dtype] != end - begin:
        raise ModelRefused(
            f"{file_name} is corrupt: tensor {key} is {dtype} {list(shape)} but its data_offsets span "
            f"{end - begin:,} bytes."
        )
    return info


def _check_safetensors_layout(name: str, tensors: dict[str, SafetensorsTensorInfo], data_size: int) -> None:
    """Tensors tile the data section exactly, as the safetensors library itself requires."""
    position = 0
    for tensor in sorted(tensors.values(), key=lambda t: t.data_offsets):
        begin, end = tensor.data_offsets
        if begin != position:
            problem = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise ModelRefused(f"{name} is corrupt: tensor {tensor.name} {problem}.")
        position = end
    if position != data_size:
        raise ModelRefused(
            f"{name} is corrupt: its tensors cover {position:,} bytes of a {data_size:,}-byte data section."
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


# --- Hugging Face and MLX directories -------------------------------------------------------------


def read_json_file(path: Path, what: str) -> Any:
    """A small JSON file from a model directory; ModelRefused when too large or not JSON."""
    if path.stat().st_size > MAX_JSON_FILE_BYTES:
        raise ModelRefused(f"{what} {path.name} is implausibly large ({path.stat().st_size:,} bytes).")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRefused(f"{what} {path.name} is not valid JSON: {exc}.") from None


def read_json_object(path: Path, what: str) -> dict[str, Any] | None:
    """An optional JSON object file of a model directory (tokenizer_config.json, generation_config.json,
    chat_template.json): None when absent, ModelRefused when too large, not JSON or not an object."""
    if not path.is_file():
        return None
    content = read_json_file(path, what)
    if not isinstance(content, dict):
        raise ModelRefused(f"{what} {path.name} does not hold a JSON object.")
    return content


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """config.json as a dict with a model_type; ModelRefused otherwise."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelRefused(
            f"{directory.name} has no config.json, so it is not a Hugging Face model directory. "
            "Import the whole model directory as downloaded (config.json, tokenizer files, *.safetensors)."
        )
    config = read_json_file(config_path, "The model's")
    if not isinstance(config, dict):
        raise ModelRefused(f"{directory.name}/config.json is not a JSON object.")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ModelRefused(
            f"{directory.name}/config.json has no model_type, so Hearth cannot tell which architecture this is."
        )
    return config


def read_shard_index(directory: str | Path) -> dict[str, str] | None:
    """model.safetensors.index.json's weight_map (tensor name -> shard file beside the index); None without
    an index. Every shard name is checked to be a plain *.safetensors file name."""
    index_path = Path(directory) / SAFETENSORS_INDEX
    if not index_path.is_file():
        return None
    index = read_json_file(index_path, "The shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelRefused(f"{SAFETENSORS_INDEX} has no weight_map.")
    for shard in weight_map.values():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise ModelRefused(f"{SAFETENSORS_INDEX} names an invalid shard {shard!r}.")
    return weight_map


def hf_weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files holding the model's weights: the index's shards, else every *.safetensors."""
    directory = Path(directory)
    return _weight_files(directory, read_shard_index(directory))


def read_hf_weight_headers(directory: str | Path) -> dict[Path, SafetensorsHeader]:
    """Every weight file's validated header, checked against the shard index when there is one."""
    directory = Path(directory)
    weight_map = read_shard_index(directory)
    headers = {path: read_safetensors_header(path) for path in _weight_files(directory, weight_map)}
    for tensor_name, shard in (weight_map or {}).items():
        if tensor_name not in headers[directory / shard].tensors:
            raise ModelRefused(
                f"{directory.name} is inconsistent: {SAFETENSORS_INDEX} puts {tensor_name} in {shard}, "
                "which does not contain it."
            )
    return headers


def _weight_files(directory: Path, weight_map: dict[str, str] | None) -> list[Path]:
    if weight_map is None:
        files = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
        if not files:
            raise ModelRefused(f"{directory.name} has no model weights (*.safetensors).")
        return files
    shard_names = sorted(set(weight_map.values()))
    missing = [s for s in shard_names if not (directory / s).is_file()]
    if missing:
        raise ModelRefused(
            f"{directory.name} is incomplete: {SAFETENSORS_INDEX} lists shards that are missing: "
            f"{', '.join(missing[:5])}. Download the missing files."
        )
    return [directory / s for s in shard_names]


def is_mlx_config(config: dict[str, Any]) -> bool:
    """mlx-lm writes `quantization: {group_size, bits}` (and the same as quantization_config)."""
    if isinstance(config.get("quantization"), dict):
        return True
    quantization_config = config.get("quantization_config")
    return (
        isinstance(quantization_config, dict)
        and "quant_method" not in quantization_config
        and {"group_size", "bits"} <= quantization_config.keys()
    )


def _detect_directory_format(directory: Path) -> str:
    files = [p for p in directory.iterdir() if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    if not weights:
        raise ModelRefused(_no_safetensors_message(directory, files))
    config = read_hf_config(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelRefused(
            f"{directory.name} has no tokenizer (tokenizer.json or tokenizer.model); "
            "download the model's tokenizer files into the same directory."
        )
    headers = read_hf_weight_headers(directory)
    if is_mlx_config(config) or any(h.metadata.get("format") == "mlx" for h in headers.values()):
        return FORMAT_MLX
    return FORMAT_HF


def _no_safetensors_message(directory: Path, files: list[Path]) -> str:
    pickled = [p.name for p in files if p.suffix in PICKLE_SUFFIXES or _starts_like_pickle(p)]
    if pickled:
        return f"{directory.name} holds only pickled PyTorch weights ({', '.join(sorted(pickled)[:3])}). " + (
            UNPICKLE_ADVICE + "."
        )
    ggufs = [p.name for p in files if p.suffix == ".gguf"]
    if ggufs:
        return f"{directory.name} contains GGUF files ({', '.join(sorted(ggufs)[:3])}); import the .gguf file itself."
    return (
        f"{directory.name} contains no model weights (*.safetensors). Import a GGUF file or a Hugging Face "
        "model directory (config.json, tokenizer files and *.safetensors)."
    )


def _starts_like_pickle(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return _is_pickle_head(head) or (head.startswith(b"PK\x03\x04") and _is_pickle_zip(path))


# --- everything else: say what it looks like ------------------------------------------------------

_MAGIC_DESCRIPTIONS = (
    (b"lmgg", "a legacy GGML file (llama.cpp's format before GGUF); convert it with llama.cpp's "
              "convert_llama_ggml_to_gguf.py or download a GGUF version"),
    (b"fmgg", "a legacy GGMF file (llama.cpp's format before GGUF); download a GGUF version"),
    (b"tjgg", "a legacy GGJT file (llama.cpp's format before GGUF); convert it with llama.cpp's "
              "convert_llama_ggml_to_gguf.py or download a GGUF version"),
    (b"\x93NUMPY", "a NumPy array file, not a model"),
    (b"\x89HDF", "an HDF5 file (Keras/TensorFlow weights?), which Hearth cannot load"),
    (b"\x89PNG", "a PNG image, not a model"),
    (b"\xff\xd8\xff", "a JPEG image, not a model"),
    (b"%PDF", "a PDF document, not a model"),
    (b"\x7fELF", "an executable program, not a model"),
    (b"MZ", "a Windows executable, not a model"),
    (b"\x1f\x8b", "a gzip archive; unpack it and import the model inside"),
    (b"BZh", "a bzip2 archive; unpack it and import the model inside"),
    (b"\xfd7zXZ", "an xz archive; unpack it and import the model inside"),
    (b"7z\xbc\xaf", "a 7-Zip archive; unpack it and import the model inside"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive; unpack it and import the model inside"),
)  # fmt: skip


def _describe_unusable_file(path: Path, head: bytes, size: int) -> str:
    name = path.name
    if _is_pickle_head(head) or (head.startswith(b"PK\x03\x04") and _is_pickle_zip(path)):
        return f"{name} is a pickled PyTorch checkpoint. {UNPICKLE_ADVICE}."
    if _looks_like_safetensors(head, size) or path.suffix == ".safetensors":
        try:
            read_safetensors_header(path)
            problem = ""
        except ModelRefused as refusal:
            problem = f" (and it is damaged: {refusal.message})"
        return (
            f"{name} is a single safetensors file{problem}. Import the whole Hugging Face model directory "
            "that contains it (config.json, tokenizer files and the *.safetensors weights), or a GGUF file."
        )
    if head.startswith(b"PK\x03\x04"):
        return f"{name} is a ZIP archive; unpack it and import the model inside."
    if len(head) > 262 and head[257:262] == b"ustar":
        return f"{name} is a tar archive; unpack it and import the model inside."
    for magic, description in _MAGIC_DESCRIPTIONS:
        if head.startswith(magic):
            return f"{name} is {description}."
    looks_like = _describe_text_or_binary(head)
    failed_download = looks_like.startswith(("an HTML page", "a Git LFS pointer"))
    if path.suffix.lower() in PICKLE_SUFFIXES and not failed_download:
        # pickle protocols 0 and 1 have no magic bytes: here the name must do
        return f"{name} looks like a pickled PyTorch checkpoint (by its name). {UNPICKLE_ADVICE}."
    return f"{name} is {looks_like}, not a model. Hearth loads GGUF files and " + (
        "Hugging Face (safetensors) or MLX model directories."
    )


def _describe_text_or_binary(head: bytes) -> str:
    if any(byte < 0x09 or 0x0E <= byte < 0x20 for byte in head):
        return f"an unrecognised binary file (it starts with bytes {head[:8].hex(' ')})"
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        try:  # the 512-byte sample may end inside a multi-byte character
            text = head[:-3].decode("utf-8").lstrip()
        except UnicodeDecodeError:
            return f"an unrecognised binary file (it starts with bytes {head[:8].hex(' ')})"
    if text.startswith(("{", "[")):
        return "a JSON file"
    if text.lower().startswith(("<!doctype html", "<html")):
        return "an HTML page (a download that returned a web page instead of the file?)"
    if text.startswith("<"):
        return "an XML or HTML file"
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer (the real file was never downloaded; run `git lfs pull`)"
    return "a text file"


def _is_pickle_head(head: bytes) -> bool:
    """Pickle protocols 2 to 5 start with PROTO (0x80) and the protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_pickle_zip(path: Path) -> bool:
    """torch.save's zip format: an archive with a data.pkl inside. Only the file listing is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith((".pkl", "data.pkl")) for n in archive.namelist()[:10_000])
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"
