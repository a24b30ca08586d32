"""Which backend serves a job: the first choice, then its fallback chain, each step recorded and explained.

For each backend of the chain, in order: skip it when it cannot honour what the request needs (its declared
capabilities), when it is not installed, or when the model's weights would not fit the memory budget; a
model that the backend runs only once converted (a Hugging Face model on llama.cpp) becomes an f16 GGUF first
(once: the file is kept beside the library); then load. Every backend passed over becomes a step on the job
({"backend", "step", "reason", "remedy"}), and when none can serve, NoBackendCanServe (503) lists them all with
what to do. What each backend is and does comes from engine/backends.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from django.conf import settings

from inference.engine.backends import (
    BACKENDS,
    GGUF_CONVERSION_TYPE,
    BackendInfo,
    backend_names,
    find_backend,
    unknown_backend,
)
from inference.engine.base import (
    SAMPLING_PARAMETERS,
    BackendUnavailable,
    LoadedModel,
    ModelRefused,
    ModelSpec,
)
from inference.engine.registry import ModelCache, backend_for, choose_backend
from inference.engine.sampling import SamplingParams
from inference.models import GenerationJob, LocalModel, ModelFormat
from inference.specs import model_spec

log = logging.getLogger(__name__)

CONVERTED_DIR_NAME = "converted"  # under MODELS_DIR: GGUF files made for llama.cpp from library models
NEED_NAMES = {"structured_output": "structured output (a grammar, a JSON schema or a forced tool call)",
              "embeddings": "embeddings", "logprobs": "logprobs"}


class NoBackendCanServe(BackendUnavailable):
    code = "no_backend_available"
    status = 503


class StepFailed(Exception):
    def __init__(self, reason: str, remedy: str = "", step: str = "failed"):
        super().__init__(reason)
        self.reason, self.remedy, self.step = reason, remedy, step


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


def model_chain(model: LocalModel, requested: str | None = None) -> list[str]:
    return backend_chain(choose_backend(model.format, requested, model.backend, settings.HEARTH_DEFAULT_BACKEND))


def job_needs(kind: str, request: dict[str, Any]) -> frozenset[str]:
    """What a job asks of its backend: "embeddings", "structured_output", "logprobs", and
    "sampling:<name>" for each sampling parameter set away from its default."""
    needs = set()
    if kind == GenerationJob.Kind.EMBEDDING:
        needs.add("embeddings")
    if request.get("structure"):
        needs.add("structured_output")
    if request.get("logprobs") is not None:
        needs.add("logprobs")
    defaults = SamplingParams()
    for param in fields(SamplingParams):
        value = (request.get("sampling") or {}).get(param.name, getattr(defaults, param.name))
        if value != getattr(defaults, param.name):
            needs.add(f"sampling:{param.name}")
    return frozenset(needs)


def describe_needs(missing: list[str]) -> str:
    return ", ".join(NEED_NAMES.get(need) or need.replace("sampling:", "the sampling parameter ") for need in missing)


def serves_format(backend: BackendInfo, model: LocalModel) -> bool:
    """Whether the backend loads this model's format, directly or (llama.cpp) through a conversion."""
    if model.format in backend.capabilities.formats:
        return True
    return model.format in backend.converted_formats and _convertible(model)


def capability_refusal(model: LocalModel, requested: str | None, needs: frozenset[str]) -> str | None:
    """None when some backend of the model's chain declares all `needs` and reads its format; else why not.

    Checked before a job is queued, from the declarations alone (nothing is imported or loaded)."""
    chain = model_chain(model, requested)
    lacking = {}
    for name in chain:
        backend = find_backend(name)
        if backend is None:
            lacking[name] = "a backend Hearth has"
            continue
        missing = backend.capabilities.lacks(needs)
        if not missing and serves_format(backend, model):
            return None
        lacking[name] = describe_needs(missing) if missing else f"the {model.get_format_display()} format"
    reasons = "; ".join(f"{name}: not {what}" for name, what in lacking.items())
    return (f"{model.name!r} runs on {' → '.join(chain)}, and none of them can do it ({reasons}). "
            f"{_who_can(model, needs)}")


def _who_can(model: LocalModel, needs: frozenset[str]) -> str:
    """The backends outside the chain that could, and how to get there."""
    able = [backend for backend in BACKENDS if not backend.capabilities.lacks(needs)]
    serving = [backend for backend in able if serves_format(backend, model)]
    if serving:
        converted = [backend.label for backend in serving if model.format not in backend.capabilities.formats]
        note = f" (the model is converted to GGUF for {' and '.join(converted)} first)" if converted else ""
        return (f"{' and '.join(backend.label for backend in serving)} can: set the 'backend' field to "
                f"{' or '.join(repr(backend.name) for backend in serving)}{note}, or leave the parameter out.")
    if able:
        return (f"{' and '.join(backend.label for backend in able)} can, but not from a model in "
                f"{model.get_format_display()} format: import a build of it in {_format_names(able)} format, "
                "or leave the parameter out.")
    return "No backend can: leave the parameter out."


def backend_rows(model: LocalModel) -> list[dict[str, Any]]:
    """The model page's matrix: per backend, its capabilities, whether it reads this model, whether it is here."""
    chain = model_chain(model)
    rows = []
    for backend in BACKENDS:
        capabilities = backend.capabilities
        if model.format in capabilities.formats:
            reads = "yes"
        elif serves_format(backend, model):
            reads = "after conversion to GGUF"
        else:
            reads = "no"
        all_sampling = set(capabilities.sampling) == set(SAMPLING_PARAMETERS)
        rows.append({
            "name": backend.name, "display": backend.label, "capabilities": capabilities, "reads": reads,
            "installed": backend.installed(), "install": backend.install_remedy(),
            "in_chain": chain.index(backend.name) + 1 if backend.name in chain else None,
            "sampling": "all" if all_sampling else "all but " + ", ".join(
                p for p in SAMPLING_PARAMETERS if p not in capabilities.sampling),
        })
    return rows


def select_and_load(cache: ModelCache, model: LocalModel, requested: str | None = None,
                    needs: frozenset[str] = frozenset()) -> Selection:
    """Load `model` on the first backend of its chain that can; raise NoBackendCanServe listing every reason."""
    spec = model_spec(model)
    steps: list[dict[str, str]] = []
    for name in model_chain(model, requested):
        try:
            loaded, converted = _try(cache, name, model, spec, needs)
        except StepFailed as failure:
            steps.append({"backend": name, "step": failure.step, "reason": failure.reason, "remedy": failure.remedy})
            continue
        if converted:
            steps.append({"backend": name, "step": "converted", "reason": converted, "remedy": ""})
        return Selection(name, loaded, steps)
    raise NoBackendCanServe(_explain(model, steps))


def _try(cache: ModelCache, name: str, model: LocalModel, spec: ModelSpec, needs: frozenset[str]
         ) -> tuple[LoadedModel, str]:
    """Load on one backend: (the model, a note when it was converted first), or StepFailed saying why not."""
    info = find_backend(name)
    if info is None:
        raise StepFailed(unknown_backend(name), "set the 'backend' field to one of them, or leave it out")
    try:
        backend = backend_for(name)
    except BackendUnavailable as error:
        raise StepFailed(error.message, info.install_remedy()) from error
    missing = info.capabilities.lacks(needs)
    if missing:
        others = [other for other in BACKENDS if other is not info and not other.capabilities.lacks(needs)]
        raise StepFailed(f"skipped: cannot do {describe_needs(missing)}",
                         f"leave it out, or choose {backend_names(others) if others else 'another backend'} "
                         "with 'backend'",
                         step="skipped")
    reason = backend.unavailable_reason()
    if reason:
        raise StepFailed(f"not available here: {reason}", info.install_remedy())
    _check_budget(cache, info, model, spec)
    converted = ""
    if model.format in info.converted_formats:
        spec, converted = _converted_spec(model, spec, info)
    try:
        if "embeddings" in needs:  # an embedding context, cached apart from the generation one
            loaded = cache.get(f"{name}-embedding", spec, load=lambda: backend.load_embedding_model(spec))
        else:
            loaded = cache.get(name, spec, load=lambda: backend.load(spec))
    except (BackendUnavailable, ModelRefused) as error:
        raise StepFailed(error.message, _load_remedy(info, model, error)) from error
    return loaded, converted


def _check_budget(cache: ModelCache, backend: BackendInfo, model: LocalModel, spec: ModelSpec) -> None:
    needed = backend.weights_bytes(spec, model.parameter_count, model.size_bytes, model.quantization)
    budget = cache.memory_budget_bytes
    if needed > budget:
        raise StepFailed(
            f"needs about {_size(needed)} for its weights, over the memory budget of {_size(budget)} "
            "(HEARTH_MODEL_MEMORY_BUDGET); not loaded",
            _smaller_remedy(model))


def _converted_spec(model: LocalModel, spec: ModelSpec, backend: BackendInfo) -> tuple[ModelSpec, str]:
    """The spec of the model's GGUF twin, converting it now unless an earlier job did."""
    from inference.engine.convert import convert_hf_to_gguf, converter_for

    try:
        converter_for(model.architecture)
    except ModelRefused as error:
        raise StepFailed(f"{backend.label} runs GGUF files and this model cannot be converted: {error.message}",
                         "choose a backend that runs this architecture, or use a GGUF build of the model") from error
    path = converted_path(model)
    if path.exists():
        note = f"runs the GGUF ({GGUF_CONVERSION_TYPE}) converted from this Hugging Face model by an earlier job"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            convert_hf_to_gguf(model.path, partial, GGUF_CONVERSION_TYPE)
            os.replace(partial, path)
        except ModelRefused as error:
            raise StepFailed(f"the conversion to GGUF failed: {error.message}",
                             "choose a backend that runs this model as it is") from error
        finally:
            partial.unlink(missing_ok=True)
        log.info("converted %s to %s for %s", model.name, path, backend.label)
        note = f"converted from Hugging Face safetensors to GGUF ({GGUF_CONVERSION_TYPE}), kept for later jobs"
    return replace(spec, path=str(path), format="gguf"), note


def converted_path(model: LocalModel) -> Path:
    return settings.MODELS_DIR / CONVERTED_DIR_NAME / f"{model.pk}-{model.name}-{GGUF_CONVERSION_TYPE}.gguf"


def _convertible(model: LocalModel) -> bool:
    from inference.engine.convert import can_convert

    return can_convert(model.architecture)


# --- what to do, per failure ---------------------------------------------------------------------------


def _load_remedy(backend: BackendInfo, model: LocalModel, error: Exception) -> str:
    text = str(error).lower()
    if "memory" in text or "alloc" in text:
        return _smaller_remedy(model)
    if not serves_format(backend, model):
        return (f"use a build of the model in {_format_names([backend])} format, or a backend that reads "
                f"{model.get_format_display()} models")
    converter = next((other for other in BACKENDS if model.format in other.converted_formats), None)
    if converter and converter is not backend and _convertible(model):
        return (f"convert it for {converter.label}: python manage.py convert_model {model.name} --to gguf "
                f"(or choose {converter.name} with the 'backend' field: it converts the model itself)")
    return backend.load_remedy


def _smaller_remedy(model: LocalModel) -> str:
    if model.format == "hf-safetensors":
        return (f"use a smaller quantization: python manage.py convert_model {model.name} --to gguf --type q4_k_m "
                "(or --type q8_0), or raise HEARTH_MODEL_MEMORY_BUDGET")
    return ("use a smaller quantization of the model (a Q4_K_M GGUF, a 4-bit MLX build), "
            "or raise HEARTH_MODEL_MEMORY_BUDGET")


def _explain(model: LocalModel, steps: list[dict[str, str]]) -> str:
    tried = ", ".join(step["backend"] for step in steps)
    reasons = " ".join(
        f"{step['backend']}: {step['reason']}" + (f" — to fix: {step['remedy']}." if step["remedy"] else ".")
        for step in steps)
    return (f"No backend could run {model.name} ({model.get_format_display()}, {model.architecture or 'unknown'}). "
            f"Tried {tried}. {reasons}")


def _format_names(backends: list[BackendInfo]) -> str:
    """The formats these backends load, as people call them: "GGUF or Hugging Face safetensors"."""
    labels = dict(ModelFormat.choices)
    formats = dict.fromkeys(fmt for backend in backends for fmt in backend.capabilities.formats)
    return " or ".join(labels.get(fmt, fmt) for fmt in formats)


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"
