"""Hugging Face safetensors -> MLX, optionally quantized to 4 or 8 bits, with mlx-lm's utilities.

The result is written beside its destination under a temporary name and renamed into place at the
end, so a half-written model never appears in the library. Only weights, config and tokenizer files
are carried over: never Python files from the source directory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from inference.engine.base import BackendUnavailable, InvalidRequest, ModelRefused
from inference.engine.mlx import mlx_import_error, read_model_config

SUPPORTED_BITS = (4, 8)
GROUP_SIZE = 64  # weights sharing one scale and bias; layers whose width does not divide stay unquantized
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def convert_hf_to_mlx(
    src_dir: str | Path,
    dst_dir: str | Path,
    bits: int | None,
    progress: Callable[[float], None] = lambda fraction: None,
) -> Path:
    """Convert the model in `src_dir` to MLX in `dst_dir` (which must not exist yet); returns `dst_dir`.

    `bits` None keeps the weights' dtype; 4 or 8 quantizes the linear and embedding layers
    (affine, groups of 64). `progress` is called with fractions from 0.0 to 1.0.
    """
    if bits is not None and bits not in SUPPORTED_BITS:
        raise InvalidRequest(f"bits must be 4, 8 or unset, not {bits}.", code="invalid_value")
    error = mlx_import_error()
    if error is not None:
        from inference.engine.mlx import INSTALL_HINT

        raise BackendUnavailable(f"Converting to MLX needs mlx: {INSTALL_HINT} ({error})")
    src, dst = Path(src_dir), Path(dst_dir)
    if dst.exists():
        raise InvalidRequest(f"{dst} already exists; converting never overwrites.")
    read_model_config(src)
    progress(0.0)

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        _convert_into(src, staging, bits, progress)
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(1.0)
    return dst


def _convert_into(src: Path, out: Path, bits: int | None, progress: Callable[[float], None]) -> None:
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    try:
        model, config = load_model(src, lazy=True, strict=True, trust_remote_code=False)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise ModelRefused(f"mlx-lm cannot read {src.name}: {exc}") from exc
    progress(0.1)

    if bits is not None:
        model, config = quantize_model(model, config, group_size=GROUP_SIZE, bits=bits)
    progress(0.3)

    mx.eval(model.parameters())  # the lazy load and quantization happen here
    progress(0.8)

    save_model(out, model, donate_model=True)
    save_config(config, config_path=out / "config.json")
    _copy_tokenizer_files(src, out)
    progress(0.95)


def _copy_tokenizer_files(src: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        source = src / name
        if source.is_symlink():
            raise ModelRefused(f"{src.name}/{name} is a symbolic link; refusing to follow it.")
        if source.is_file():
            shutil.copyfile(source, out / name)
