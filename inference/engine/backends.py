"""What Hearth knows of each backend without importing it: one `BackendInfo` per backend, in `BACKENDS`.

Each says its name and label, the packages it needs (looked for, never imported), how to install them, what it
can honour (`Capabilities`), the formats it runs, what a model's weights take once it has loaded them, and what to
try when it cannot load a model. The web process reads these and never imports torch, llama.cpp or mlx; the class
named by `implementation` is imported by `registry.backend_for`, where a model is loaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from inference.engine.base import Capabilities, ModelSpec

GGUF_CONVERSION_TYPE = "f16"  # what a model becomes for a backend that runs it only once converted to GGUF
GGUF_CONVERSION_BYTES = 2  # per parameter

# (spec, parameter_count, size_bytes, quantization) -> bytes the weights take once loaded
WeightsEstimate = Callable[[ModelSpec, int, int, str], int]


@dataclass(frozen=True)
class BackendInfo:
    """One backend as every process may know it; `registry.backend_for(name)` gives the backend itself."""

    name: str  # in requests, settings and the database
    label: str  # for people
    implementation: str  # "module:Class" of its `Backend`
    packages: tuple[str, ...]  # import names it needs, found with importlib.util.find_spec
    install_hint: str
    capabilities: Capabilities
    native_formats: tuple[str, ...]  # the formats it serves when nothing else is chosen
    estimate_weights: WeightsEstimate
    load_remedy: str  # what to try when it cannot load a model (neither for lack of memory nor of a format)
    converted_formats: tuple[str, ...] = ()  # formats it runs once converted to a GGUF_CONVERSION_TYPE GGUF

    def installed(self) -> bool:
        """Whether its packages are present, without importing them (mlx-lm alone takes seconds)."""
        return all(importlib.util.find_spec(package) is not None for package in self.packages)

    def install_remedy(self) -> str:
        return f"{self.install_hint}; make run installs every backend this platform runs"

    def weights_bytes(self, spec: ModelSpec, parameter_count: int, size_bytes: int, quantization: str = "") -> int:
        """Memory the model's weights take once this backend has loaded them (checked before loading)."""
        return self.estimate_weights(spec, parameter_count, size_bytes, quantization)


# --- what the weights take -----------------------------------------------------------------------------


def _gguf_as_mapped(spec: ModelSpec, parameter_count: int, size_bytes: int, quantization: str) -> int:
    """llama.cpp maps the GGUF file as it is; a model in another format reaches it converted to an f16 GGUF."""
    return size_bytes if spec.format == "gguf" else parameter_count * GGUF_CONVERSION_BYTES


def _file_as_mapped(spec: ModelSpec, parameter_count: int, size_bytes: int, quantization: str) -> int:
    return size_bytes


def _torch_compute_dtype(spec: ModelSpec, parameter_count: int, size_bytes: int, quantization: str) -> int:
    """Every parameter in the compute dtype: the "dtype" option, else 16-bit on CUDA, and on the CPU bf16 for a
    bf16 Hugging Face checkpoint (`quantization` "bf16"), f32 otherwise. Imports torch when no dtype is set."""
    dtype = spec.options.get("dtype")
    if dtype:
        return parameter_count * (4 if dtype in ("float32", "fp32") else 2)
    if spec.format == "hf-safetensors" and quantization == "bf16":
        return parameter_count * 2
    import torch

    return parameter_count * (2 if torch.cuda.is_available() else 4)


# --- the backends, in order of preference --------------------------------------------------------------

LLAMACPP = BackendInfo(
    name="llamacpp",
    label="llama.cpp",
    implementation="inference.engine.llamacpp:LlamaCppBackend",
    packages=("llama_cpp",),
    install_hint="pip install llama-cpp-python (for NVIDIA GPUs: CMAKE_ARGS=-DGGML_CUDA=on pip install llama-cpp-python)",
    # llama.cpp's own sampler chain per sequence (every parameter, the penalty window too); grammars, logprobs and
    # embeddings are its own.
    capabilities=Capabilities(formats=("gguf",), structured_output=True, embeddings=True, logprobs=True,
                              devices=("cpu", "cuda", "metal", "vulkan"), batching=True),
    native_formats=("gguf",),
    converted_formats=("hf-safetensors",),
    estimate_weights=_gguf_as_mapped,
    load_remedy="upgrade llama-cpp-python for newer architectures, or try a smaller quantization",
)
TORCH = BackendInfo(
    name="torch",
    label="PyTorch (Hearth engine)",
    implementation="inference.engine.torch.backend:TorchBackend",
    packages=("torch",),
    install_hint="pip install torch",
    capabilities=Capabilities(formats=("hf-safetensors", "gguf"), devices=("cpu", "cuda"), batching=True),
    native_formats=("hf-safetensors",),
    estimate_weights=_torch_compute_dtype,
    load_remedy="choose another backend with the 'backend' field",
)
MLX = BackendInfo(
    name="mlx",
    label="MLX",
    implementation="inference.engine.mlx:MlxBackend",
    packages=("mlx", "mlx_lm"),
    install_hint="pip install 'hearth[mlx]' (or: pip install \"mlx[cpu]\" mlx-lm on Linux)",
    capabilities=Capabilities(formats=("mlx", "hf-safetensors"), devices=("cpu", "metal"), batching=True),
    native_formats=("mlx",),
    estimate_weights=_file_as_mapped,
    load_remedy="upgrade mlx-lm for newer architectures, or choose another backend with the 'backend' field",
)

BACKENDS: tuple[BackendInfo, ...] = (LLAMACPP, TORCH, MLX)
_BY_NAME = {info.name: info for info in BACKENDS}


def find_backend(name: str) -> BackendInfo | None:
    return _BY_NAME.get(name)


def backend_names(backends: Iterable[BackendInfo] = BACKENDS, last: str = "or") -> str:
    """Their names as a sentence says them: "llamacpp, torch or mlx"."""
    names = [info.name for info in backends]
    return f"{', '.join(names[:-1])} {last} {names[-1]}" if len(names) > 1 else "".join(names)


def unknown_backend(name: str) -> str:
    return f"Unknown backend {name!r}; choose {backend_names()}."
