"""Which backend serves a job: the first choice, then its fallback chain, each step recorded and explained.

For each backend of the chain, in order: skip it when it cannot honour what the request needs (its declared
capabilities), when it is not installed, or when the model's weights would not fit the memory budget; a
Hugging Face model reaching llama.cpp is converted to an f16 GGUF first (once: the file is kept beside the
library); then load. Every backend passed over becomes a step on the job ({"backend", "step", "reason",
"remedy"}), and when none can serve, NoBackendCanServe (503) lists them all with what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from django.conf import settings

from inference.engine.base import (
    BACKEND_CAPABILITIES,
    SAMPLING_PARAMETERS,
    BackendUnavailable,
    LoadedModel,
    ModelRefused,
    ModelSpec,
)
from inference.engine.registry import (
    ModelCache,
    backend_for,
    capabilities_for,
    choose_backend,
    installed,
    weights_bytes,
)
from inference.engine.sampling import SamplingParams
from inference.models import GenerationJob, LocalModel
from inference.specs import model_spec

log = logging.getLogger(__name__)

CONVERTED_DIR_NAME = "converted"  # under MODELS_DIR: GGUF files made for llama.cpp from library models
CONVERTED_TYPE = "f16"
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


def serves_format(name: str, model: LocalModel) -> bool:
    """Whether the backend loads this model's format, directly or (llama.cpp) through a conversion."""
    if model.format in capabilities_for(name).formats:
        return True
    return name == "llamacpp" and model.format == "hf-safetensors" and _convertible(model)


def capability_refusal(model: LocalModel, requested: str | None, needs: frozenset[str]) -> str | None:
    """None when some backend of the model's chain declares all `needs` and reads its format; else why not.

    Checked before a job is queued, from the declarations alone (nothing is imported or loaded)."""
    chain = model_chain(model, requested)
    lacking = {}
    for name in chain:
        if name not in BACKEND_CAPABILITIES:
            lacking[name] = "a backend Hearth has"
            continue
        missing = capabilities_for(name).lacks(needs)
        if not missing and serves_format(name, model):
            return None
        lacking[name] = describe_needs(missing) if missing else f"the {model.get_format_display()} format"
    able = [name for name in ("llamacpp", "torch", "mlx") if not capabilities_for(name).lacks(needs)]
    return (
        f"{model.name!r} runs on {' → '.join(chain)}, and none of them can do it "
        f"({'; '.join(f'{name}: not {what}' for name, what in lacking.items())}). "
        f"{' and '.join(_display(a) for a in able) or 'No backend'} can: choose it with the 'backend' field "
        "(a Hugging Face model is converted to GGUF for llama.cpp), or leave the parameter out."
    )


def backend_rows(model: LocalModel) -> list[dict[str, Any]]:
    """The model page's matrix: per backend, its capabilities, whether it reads this model, whether it is here."""
    chain = model_chain(model)
    rows = []
    for name, capabilities in BACKEND_CAPABILITIES.items():
        if model.format in capabilities.formats:
            reads = "yes"
        elif serves_format(name, model):
            reads = "after conversion to GGUF"
        else:
            reads = "no"
        all_sampling = set(capabilities.sampling) == set(SAMPLING_PARAMETERS)
        rows.append({
            "name": name, "display": _display(name), "capabilities": capabilities, "reads": reads,
            "installed": installed(name), "install": _install_remedy(name),
            "in_chain": chain.index(name) + 1 if name in chain else None,
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
    try:
        backend = backend_for(name)
    except BackendUnavailable as error:
        raise StepFailed(error.message, _install_remedy(name)) from error
    missing = backend.capabilities.lacks(needs)
    if missing:
        others = [n for n in ("llamacpp", "torch", "mlx") if n != name and not capabilities_for(n).lacks(needs)]
        raise StepFailed(f"skipped: cannot do {describe_needs(missing)}",
                         f"leave it out, or choose {' or '.join(others) or 'another backend'} with 'backend'",
                         step="skipped")
    reason = backend.unavailable_reason()
    if reason:
        raise StepFailed(f"not available here: {reason}", _install_remedy(name))
    _check_budget(cache, name, model, spec)
    converted = ""
    if name == "llamacpp" and model.format == "hf-safetensors":
        spec, converted = _converted_spec(model, spec)
    try:
        if "embeddings" in needs:  # llama.cpp's embedding context, cached apart from its generation context
            from inference.engine.embeddings import CACHE_NAME, LlamaCppEmbeddingModel

            loaded = cache.get(CACHE_NAME, spec, load=lambda: LlamaCppEmbeddingModel(spec))
        else:
            loaded = cache.get(name, spec, load=lambda: backend.load(spec))
    except (BackendUnavailable, ModelRefused) as error:
        raise StepFailed(error.message, _load_remedy(name, model, error)) from error
    return loaded, converted


def _check_budget(cache: ModelCache, name: str, model: LocalModel, spec: ModelSpec) -> None:
    needed = weights_bytes(name, spec, model.parameter_count, model.size_bytes, model.quantization)
    budget = cache.memory_budget_bytes
    if needed > budget:
        raise StepFailed(
            f"needs about {_size(needed)} for its weights, over the memory budget of {_size(budget)} "
            "(HEARTH_MODEL_MEMORY_BUDGET); not loaded",
            _smaller_remedy(model))


def _converted_spec(model: LocalModel, spec: ModelSpec) -> tuple[ModelSpec, str]:
    """The spec of the model's GGUF twin, converting it now unless an earlier job did."""
    from inference.engine.convert import convert_hf_to_gguf, converter_for

    try:
        converter_for(model.architecture)
    except ModelRefused as error:
        raise StepFailed(f"llama.cpp runs GGUF files and this model cannot be converted: {error.message}",
                         "choose a backend that runs this architecture, or use a GGUF build of the model") from error
    path = converted_path(model)
    if path.exists():
        note = f"runs the GGUF ({CONVERTED_TYPE}) converted from this Hugging Face model by an earlier job"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            convert_hf_to_gguf(model.path, partial, CONVERTED_TYPE)
            os.replace(partial, path)
        except ModelRefused as error:
            raise StepFailed(f"the conversion to GGUF failed: {error.message}",
                             "choose a backend that runs this model as it is") from error
        finally:
            partial.unlink(missing_ok=True)
        log.info("converted %s to %s for llama.cpp", model.name, path)
        note = f"converted from Hugging Face safetensors to GGUF ({CONVERTED_TYPE}), kept for later jobs"
    return replace(spec, path=str(path), format="gguf"), note


def converted_path(model: LocalModel) -> Path:
    return settings.MODELS_DIR / CONVERTED_DIR_NAME / f"{model.pk}-{model.name}-{CONVERTED_TYPE}.gguf"


def _convertible(model: LocalModel) -> bool:
    from inference.engine.convert import can_convert

    return can_convert(model.architecture)


# --- what to do, per failure ---------------------------------------------------------------------------


def _install_remedy(name: str) -> str:
    return {
        "llamacpp": "install llama.cpp's bindings: pip install llama-cpp-python (make run installs everything)",
        "mlx": "install MLX: pip install 'hearth[mlx]'",
        "torch": "install torch: pip install torch (make run installs everything)",
    }.get(name, f"choose one of llamacpp, torch, mlx instead of {name!r}")


def _load_remedy(name: str, model: LocalModel, error: Exception) -> str:
    text = str(error).lower()
    if "memory" in text or "alloc" in text:
        return _smaller_remedy(model)
    if name == "torch" and model.format == "hf-safetensors" and _convertible(model):
        return (f"convert it for llama.cpp: python manage.py convert_model {model.name} --to gguf "
                "(or let the chain reach llamacpp)")
    if name == "llamacpp" and model.format != "gguf":
        return "use a GGUF build of the model, or a backend that reads this format"
    if name == "llamacpp":
        return "upgrade llama-cpp-python for newer architectures, or try a smaller quantization"
    return "choose another backend with the 'backend' field"


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


def _display(name: str) -> str:
    return {"llamacpp": "llama.cpp", "torch": "torch", "mlx": "MLX"}.get(name, name)


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"
