"""Hugging Face safetensors checkpoints -> our modules, through each architecture's weight map.

Tensors are read from memory-mapped safetensors files: config.json and the weight files (sharded ones
through `model.safetensors.index.json`) come from `formats`' readers. Nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open

from inference.engine.base import ModelRefused
from inference.engine.formats import hf_weight_files, read_hf_config
from inference.engine.torch.models import architecture_for
from inference.engine.torch.models.layers import fuse_projections

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedWeights:
    model: torch.nn.Module
    arch: ModuleType
    args: Any
    dtype: torch.dtype
    device: torch.device


def pick_device_and_dtype(device: str | None = None, dtype: str | None = None, *, stored: str | None = None
                          ) -> tuple[torch.device, torch.dtype]:
    """CUDA when present (bf16 where supported, else fp16), otherwise CPU: bf16 for a checkpoint stored in
    bf16 (what transformers' dtype="auto" does; half the memory, twice the decode speed), fp32 for the rest.
    Both overridable."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_ = torch.device(device)
    if dtype is None:
        if device_.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if stored == "bfloat16" else "float32"
    if dtype not in DTYPES:
        raise ModelRefused(f"Unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    if device_.type == "cpu" and DTYPES[dtype] == torch.float16:
        raise ModelRefused("float16 runs on CUDA only; use float32 or bfloat16 on CPU.")
    return device_, DTYPES[dtype]


def stored_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a Hugging Face config says its weights are stored in ("bfloat16", "float32", ...)."""
    for source in (config, config.get("text_config")):
        if isinstance(source, dict):
            dtype = source.get("torch_dtype") or source.get("dtype")
            if isinstance(dtype, str):
                return dtype
    return None


def load_hf_model(model_dir: str | Path, *, device: str | None = None, dtype: str | None = None) -> LoadedWeights:
    config = read_hf_config(model_dir)
    arch = architecture_for(config["model_type"])
    args = arch.Args.from_config(config)
    device_, dtype_ = pick_device_and_dtype(device, dtype, stored=stored_dtype(config))
    aliases = getattr(arch, "HF_PREFIX_ALIASES", ())
    with ExitStack() as stack:
        where = open_checkpoint(stack, model_dir)

        def tensors():
            for name in arch.weight_names(args):
                key = _find_key(name.hf, where, aliases)
                yield name.ours, where[key].get_tensor(key)

        model = build_model(arch, args, tensors(), device=device_, dtype=dtype_)
    return LoadedWeights(model, arch, args, dtype_, device_)


def open_checkpoint(stack: ExitStack, model_dir: str | Path) -> dict[str, Any]:
    """Every tensor name of the checkpoint -> the memory-mapped safetensors file holding it (open in `stack`)."""
    handles = [stack.enter_context(safe_open(str(f), framework="pt", device="cpu")) for f in hf_weight_files(model_dir)]
    return {key: handle for handle in handles for key in handle.keys()}  # noqa: SIM118 (not a dict)


def _find_key(hf_name: str, available: dict, aliases: tuple[tuple[str, str], ...]) -> str:
    if hf_name in available:
        return hf_name
    for prefix, replacement in aliases:
        if hf_name.startswith(prefix) and replacement + hf_name[len(prefix):] in available:
            return replacement + hf_name[len(prefix):]
    raise ModelRefused(f"The checkpoint lacks tensor {hf_name!r}.")


def build_model(arch: ModuleType, args: Any, tensors: Iterable[tuple[str, torch.Tensor]], *,
                device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build the module without allocating (meta device), then assign each named tensor after
    checking its shape. Every parameter must be given exactly once."""
    with torch.device("meta"):
        model = arch.Model(args)
    expected = {name: p.shape for name, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    for ours, tensor in tensors:
        if ours not in expected:
            raise ModelRefused(f"Unexpected tensor {ours!r} for {type(model).__module__}.")
        if tuple(tensor.shape) != tuple(expected[ours]):
            raise ModelRefused(f"Tensor {ours!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[ours])}.")
        state[ours] = tensor.to(device=device, dtype=dtype)
    missing = set(expected) - set(state)
    if missing:
        raise ModelRefused(f"Missing tensors: {', '.join(sorted(missing)[:5])}.")
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_buffers(device)
    fuse_projections(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
