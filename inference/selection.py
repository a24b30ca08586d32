"""Which backend serves a job: the first choice, then its fallback chain, each failure recorded and explained."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from inference.engine.base import BackendUnavailable, LoadedModel, ModelRefused
from inference.engine.registry import ModelCache, backend_for, choose_backend
from inference.models import LocalModel
from inference.specs import model_spec


class NoBackendCanServe(BackendUnavailable):
    code = "no_backend_available"
    status = 503


@dataclass
class Selection:
    backend: str
    loaded: LoadedModel
    fallbacks: list[dict[str, str]] = field(default_factory=list)


def backend_chain(first: str) -> list[str]:
    chain = [first]
    for name in settings.HEARTH_FALLBACK_CHAINS.get(first, []):
        if name not in chain:
            chain.append(name)
    return chain


def select_and_load(cache: ModelCache, model: LocalModel, requested: str | None = None) -> Selection:
    """Load `model` on the first backend of its chain that can; raise NoBackendCanServe listing every reason."""
    first = choose_backend(model.format, requested, model.backend, settings.HEARTH_DEFAULT_BACKEND)
    spec = model_spec(model)
    tried: list[dict[str, str]] = []
    for name in backend_chain(first):
        try:
            backend = backend_for(name)
            reason = backend.unavailable_reason()
            if reason:
                raise BackendUnavailable(reason)
            loaded = cache.get(name, spec, load=lambda backend=backend: backend.load(spec))
        except (BackendUnavailable, ModelRefused) as error:
            tried.append({"backend": name, "reason": error.message})
            continue
        return Selection(name, loaded, tried)
    reasons = " ".join(f"{step['backend']}: {step['reason']}" for step in tried)
    raise NoBackendCanServe(
        f"No backend could run {model.name} ({model.get_format_display()}, {model.architecture or 'unknown'}). "
        f"Tried {', '.join(step['backend'] for step in tried)}. {reasons}"
    )
