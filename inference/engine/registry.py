"""Backend objects by name, the default choice, and the per-process model cache.

What each backend is (capabilities, packages, memory estimate, remedies) is `engine/backends.py`'s, read without
importing any backend. `backend_for(name)` imports and returns one; `native_backend(format)` says which backend a
format runs on by default; `ModelCache` keeps loaded models across jobs and evicts the least recently used when a
memory budget would be exceeded.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from collections.abc import Callable

from inference.engine.backends import BACKENDS, find_backend, unknown_backend
from inference.engine.base import Backend, BackendUnavailable, LoadedModel, ModelSpec


def backend_for(name: str) -> Backend:
    """The backend's object, its module imported now (torch, llama_cpp or mlx with it)."""
    info = find_backend(name)
    if info is None:
        raise BackendUnavailable(unknown_backend(name), status=400)
    module_name, class_name = info.implementation.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackendUnavailable(f"The {name} backend cannot be imported here: {error}.") from error
    return getattr(module, class_name)()


def native_backend(model_format: str) -> str:
    for info in BACKENDS:
        if model_format in info.native_formats:
            return info.name
    raise KeyError(f"No backend runs {model_format!r} models natively.")


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

    def unload(self, paths: set[str]) -> int:
        """Close the models loaded from any of `paths` that are not busy (an API client's unload); how many."""
        closed = 0
        with self._lock:
            for key in [key for key in self._models if key[1] in paths]:
                model = self._models[key]
                if self.is_busy(model):
                    continue
                del self._models[key]
                self.on_evict(model)
                model.close()
                closed += 1
        return closed

    def clear(self) -> None:
        with self._lock:
            while self._models:
                model = self._models.popitem()[1]
                self.on_evict(model)
                model.close()
