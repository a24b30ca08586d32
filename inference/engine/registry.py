"""Backend selection and the per-process model cache.

`backend_for(name)` returns a backend by name; `native_backend(format)` says which backend a format runs on
by default; `capabilities_for(name)` what it can honour (without importing it); `weights_bytes` what a model's
weights take on a backend, checked against the memory budget before loading; `ModelCache` keeps loaded models
across jobs and evicts the least recently used when a memory budget would be exceeded.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Callable

from inference.engine.base import (
    BACKEND_CAPABILITIES,
    Backend,
    BackendUnavailable,
    Capabilities,
    LoadedModel,
    ModelSpec,
)

BACKEND_CLASSES = {
    "llamacpp": "inference.engine.llamacpp:LlamaCppBackend",
    "torch": "inference.engine.torch.backend:TorchBackend",
    "mlx": "inference.engine.mlx:MlxBackend",
}
NATIVE_BACKENDS = {"gguf": "llamacpp", "hf-safetensors": "torch", "mlx": "mlx"}
BACKEND_PACKAGES = {"llamacpp": ("llama_cpp",), "torch": ("torch",), "mlx": ("mlx", "mlx_lm")}


def backend_for(name: str) -> Backend:
    if name not in BACKEND_CLASSES:
        known = ", ".join(sorted(BACKEND_CLASSES))
        raise BackendUnavailable(f"Unknown backend {name!r}; Hearth has {known}.", status=400)
    module_name, class_name = BACKEND_CLASSES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackendUnavailable(f"The {name} backend cannot be imported here: {error}.") from error
    return getattr(module, class_name)()


def installed(name: str) -> bool:
    """Whether the backend's packages are present, found without importing them (mlx-lm alone takes seconds)."""
    return all(importlib.util.find_spec(package) is not None for package in BACKEND_PACKAGES[name])


def capabilities_for(name: str) -> Capabilities:
    return BACKEND_CAPABILITIES[name]


def weights_bytes(backend_name: str, spec: ModelSpec, parameter_count: int, size_bytes: int,
                  quantization: str = "") -> int:
    """Memory the weights take once loaded: torch holds every parameter in its compute dtype (16-bit on
    CUDA; on CPU bf16 for a bf16 Hugging Face checkpoint, `quantization` "bf16", else f32); llama.cpp and mlx
    map the file as it is (a Hugging Face model reaches llama.cpp as an f16 GGUF)."""
    if backend_name == "torch":
        stored_bf16 = spec.format == "hf-safetensors" and quantization == "bf16"
        return parameter_count * _torch_element_bytes(spec.options.get("dtype"), stored_bf16)
    if backend_name == "llamacpp" and spec.format == "hf-safetensors":
        return parameter_count * 2
    return size_bytes


def _torch_element_bytes(dtype: str | None, stored_bf16: bool) -> int:
    if dtype:
        return 4 if dtype in ("float32", "fp32") else 2
    import torch

    return 2 if torch.cuda.is_available() or stored_bf16 else 4


def native_backend(model_format: str) -> str:
    return NATIVE_BACKENDS[model_format]


def choose_backend(model_format: str, *requested: str | None) -> str:
    """The first named choice (request, model setting, server default), else the format's native backend."""
    for name in requested:
        if name:
            return name
    return native_backend(model_format)


class ModelCache:
    """Loaded models of this process, least recently used first out when the memory budget is exceeded. A model
    that `is_busy` (sequences in its scheduler) is never evicted; `on_evict` hears of each one that is."""

    def __init__(self, memory_budget_bytes: int, *, is_busy: Callable[[LoadedModel], bool] | None = None,
                 on_evict: Callable[[LoadedModel], None] | None = None):
        self.memory_budget_bytes = memory_budget_bytes
        self.is_busy = is_busy or (lambda _model: False)
        self.on_evict = on_evict or (lambda _model: None)
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(backend_name: str, spec: ModelSpec) -> tuple:
        return (backend_name, spec.path, spec.n_ctx, spec.n_gpu_layers, spec.n_threads, spec.chat_template,
                spec.n_slots, spec.kv_tokens)

    def get(self, backend_name: str, spec: ModelSpec, load: Callable[[], LoadedModel] | None = None) -> LoadedModel:
        key = self.key(backend_name, spec)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = load() if load else backend_for(backend_name).load(spec)
            self._models[key] = model
            self._evict_over_budget(keep=key)
            return model

    def _evict_over_budget(self, keep: tuple) -> None:
        for key in list(self._models):
            if self.used_bytes() <= self.memory_budget_bytes:
                return
            model = self._models[key]
            if key == keep or self.is_busy(model):
                continue
            del self._models[key]
            self.on_evict(model)
            model.close()

    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    def loaded_keys(self) -> list[tuple[str, str]]:
        return [(key[0], key[1]) for key in self._models]

    def loaded_models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def clear(self) -> None:
        with self._lock:
            while self._models:
                model = self._models.popitem()[1]
                self.on_evict(model)
                model.close()
