"""Converting library models to other formats, as background jobs with progress."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inference.audit import audit_record
from inference.engine.base import EngineError, InvalidRequest
from inference.models import JobStatus, LocalModel, ModelConversion
from inference.services import model_import

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m")
MLX_BITS = (4, 8)
PROGRESS_WRITE_INTERVAL_SECONDS = 0.5


def conversion_name(source: LocalModel, target: str, options: dict) -> str:
    suffix = options.get("type") if target == "gguf" else (f"mlx-{options['bits']}bit" if options.get("bits")
                                                           else "mlx")
    return f"{source.name}-{suffix}"[:128]


def conversion_start(source: LocalModel, target: str, *, gguf_type: str = "f16", bits: int | None = None,
                     name: str | None = None, dispatch: bool = True, actor=None) -> ModelConversion:
    """Queue a conversion; with dispatch, a worker runs it (else the caller runs conversion_run itself). Recorded in
    the audit trail as model.convert, or model.quantize when it quantizes (`actor`: who asked; None, a command)."""
    if source.format != "hf-safetensors":
        raise InvalidRequest(
            f"{source.name} is {source.get_format_display()}; Hearth converts Hugging Face safetensors models."
        )
    if target == "gguf" and gguf_type not in GGUF_TYPES:
        raise InvalidRequest(f"--type must be one of {', '.join(GGUF_TYPES)}.")
    if target == "mlx" and bits not in (None, *MLX_BITS):
        raise InvalidRequest("--bits must be 4 or 8.")
    options = {"type": gguf_type} if target == "gguf" else {"bits": bits}
    result_name = name or conversion_name(source, target, options)
    if LocalModel.objects.filter(name=result_name).exists():
        raise InvalidRequest(f"The library already has {result_name!r}; choose another --name.")
    conversion = ModelConversion.objects.create(source=source, target=target, options=options,
                                                result_name=result_name)
    quantizes = (target == "gguf" and gguf_type.startswith("q")) or (target == "mlx" and bits is not None)
    audit_record(actor, "model.quantize" if quantizes else "model.convert", source.name, to=target,
                 options=options, result=result_name)
    if dispatch:
        conversion_id = conversion.pk
        transaction.on_commit(lambda: _send(conversion_id))
    return conversion


def _send(conversion_id: int) -> None:
    """To the converter: the embedded mode's own thread, else a converter worker on the "conversions" queue (never a
    generation worker, whose threads and memory belong to the chats)."""
    if settings.HEARTH_EMBEDDED_WORKER:
        from inference.embedded import convert_in_background

        convert_in_background(conversion_id)
        return
    from inference.tasks import CONVERSION_QUEUE, model_convert

    model_convert.apply_async(args=[conversion_id], queue=CONVERSION_QUEUE)


def converter_missing() -> str:
    """Why a conversion started now would wait (no converter is alive), or "" when one will take it."""
    from inference.presence import CONVERTER, get_presence

    if settings.HEARTH_EMBEDDED_WORKER or get_presence(CONVERTER).live_workers():
        return ""
    return ("No converter is running, so it waits in the queue until one starts: `docker compose up -d converter`, "
            "or `make converter` beside `make worker`.")


def resume_orphaned_conversions(converter: str) -> int:
    """Conversions whose converter died mid-way (its name is no longer alive): queued again and sent, so this
    converter (or another) starts them over. Returns how many."""
    from inference.presence import CONVERTER, get_presence

    alive = set(get_presence(CONVERTER).live_workers()) | {converter}
    orphans = [pk for pk, worker in ModelConversion.objects.filter(status=JobStatus.RUNNING)
               .values_list("pk", "worker") if worker not in alive]
    for pk in orphans:
        if ModelConversion.objects.filter(pk=pk, status=JobStatus.RUNNING).update(
                status=JobStatus.QUEUED, progress=0.0, worker=""):
            _send(pk)
    return len(orphans)


def _progress_writer(conversion_id: int):
    last = [0.0]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_WRITE_INTERVAL_SECONDS or fraction >= 1.0:
            last[0] = now
            ModelConversion.objects.filter(pk=conversion_id).update(progress=max(0.0, min(1.0, fraction)))

    return report


def conversion_run(conversion_id: int, converter: str = "") -> ModelConversion:
    """Run a queued conversion to the end: the file is written under MODELS_DIR and imported into the library.
    A conversion already taken by a converter (a message delivered twice) is left to it."""
    claimed = ModelConversion.objects.filter(pk=conversion_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, worker=converter)
    conversion = ModelConversion.objects.select_related("source").get(pk=conversion_id)
    if not claimed:
        return conversion
    settings.MODELS_DIR.mkdir(parents=True, exist_ok=True)
    report = _progress_writer(conversion.pk)
    destination = settings.MODELS_DIR / (conversion.result_name + (".gguf" if conversion.target == "gguf" else ""))
    try:
        if destination.exists():
            raise InvalidRequest(f"{destination} already exists; remove it or choose another name.")
        if conversion.target == "gguf":
            from inference.engine.convert import convert_hf_to_gguf

            written = convert_hf_to_gguf(conversion.source.path, destination, conversion.options["type"],
                                         progress=report)
        else:
            from inference.engine.mlx_convert import convert_hf_to_mlx

            written = convert_hf_to_mlx(conversion.source.path, destination, conversion.options.get("bits"),
                                        progress=report)
        result = model_import(written, name=conversion.result_name, audit_action=None)  # recorded when asked
    except Exception as error:
        message = error.message if isinstance(error, EngineError) else f"{type(error).__name__}: {error}"
        if not isinstance(error, EngineError):
            log.exception("conversion %s failed", conversion.pk)
        _remove(destination)
        ModelConversion.objects.filter(pk=conversion.pk).update(
            status=JobStatus.FAILED, error_text=message, finished_at=timezone.now())
    else:
        ModelConversion.objects.filter(pk=conversion.pk).update(
            status=JobStatus.SUCCEEDED, progress=1.0, result=result, finished_at=timezone.now())
    conversion.refresh_from_db()
    return conversion


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
