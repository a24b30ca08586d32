"""Translate library rows and job rows into the engine's plain dataclasses."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.conf import settings

from inference.engine.base import GenerationRequest, ModelSpec
from inference.engine.sampling import SamplingParams
from inference.models import LocalModel

DEFAULT_KV_TOKENS_CAP = 32768  # KV cells of a loaded model when HEARTH_KV_TOKENS is not set


def effective_context(model: LocalModel) -> int:
    """The most tokens one sequence holds (prompt and reply): the model's context, at most HEARTH_MAX_CTX and at
    most its slot's share of the KV cells (kv_tokens ÷ HEARTH_WORKER_SLOTS, as llama-server's `-c` ÷ `-np`)."""
    wanted = min(model.context_length or settings.HEARTH_MAX_CTX, settings.HEARTH_MAX_CTX)
    return max(1, min(wanted, kv_tokens(wanted) // settings.HEARTH_WORKER_SLOTS))


def kv_tokens(n_ctx: int) -> int:
    """KV cache cells of a loaded model, for all its slots: HEARTH_KV_TOKENS, else a full context per slot up to
    DEFAULT_KV_TOKENS_CAP (never less than one full context)."""
    return settings.HEARTH_KV_TOKENS or max(n_ctx, min(n_ctx * settings.HEARTH_WORKER_SLOTS, DEFAULT_KV_TOKENS_CAP))


def model_spec(model: LocalModel) -> ModelSpec:
    n_ctx = effective_context(model)
    return ModelSpec(
        path=model.path,
        format=model.format,
        architecture=model.architecture,
        n_ctx=n_ctx,
        n_gpu_layers=settings.HEARTH_N_GPU_LAYERS,
        n_threads=settings.HEARTH_N_THREADS,
        chat_template=model.chat_template or None,
        n_slots=settings.HEARTH_WORKER_SLOTS,
        kv_tokens=n_ctx * settings.HEARTH_WORKER_SLOTS,
    )


def request_to_json(request: GenerationRequest) -> dict[str, Any]:
    sampling = asdict(request.sampling)
    sampling["logit_bias"] = {str(k): v for k, v in request.sampling.logit_bias.items()}
    return {
        "messages": request.messages,
        "prompt": request.prompt,
        "tools": request.tools,
        "sampling": sampling,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
        "fit_history": request.fit_history,
        "structure": request.structure,
        "logprobs": request.logprobs,
        "n": request.n,
    }


def request_from_json(data: dict[str, Any]) -> GenerationRequest:
    sampling = dict(data.get("sampling") or {})
    sampling["logit_bias"] = {int(k): float(v) for k, v in (sampling.get("logit_bias") or {}).items()}
    return GenerationRequest(
        messages=data.get("messages"),
        prompt=data.get("prompt"),
        tools=data.get("tools"),
        sampling=SamplingParams(**sampling),
        max_tokens=data.get("max_tokens"),
        stop=tuple(data.get("stop") or ()),
        fit_history=bool(data.get("fit_history")),
        structure=data.get("structure"),
        logprobs=data.get("logprobs"),
        n=int(data.get("n") or 1),
    )
