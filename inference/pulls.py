"""Pulling models from the Hugging Face Hub as background jobs: progress, resume, verification, provenance.

A pull (`ModelPull`) is queued by `pull_start` and run by `pull_run` on a puller (`celery worker -Q pulls`: see
docs/architecture.md) or the embedded server's puller thread:

  resolve    the repo at its revision (inference/hub.py): the commit, the files with sizes and sha256, and the plan
             (one GGUF model, split parts included, or a safetensors folder's import files)
  check      the library name is free, the disk has room for what is left to fetch (plus a reserve)
  fetch      each file into MODELS_DIR/.pulls/<owner>--<name>@<commit>/<file>.part, from the byte it holds (a restart,
             a dropped connection, a pull started again after a network failure), retried with backoff; checked
             against the hub's sha256 (or git blob id) and only then renamed to <file>
  import     moved into MODELS_DIR (a split GGUF's parts side by side in a folder of their own, so llama.cpp loads
             the set from the first) and added through `model_import`, the same validation as `import_model`; the
             library row records the repo, revision, commit and files

The row holds the progress (bytes done of total, speed); the worker writes it every half second, and each write
also notices a cancel (the row is no longer `running`): the download stops and its files are removed.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from inference import hub
from inference.audit import audit_record
from inference.engine.base import EngineError, InvalidRequest
from inference.models import FINISHED_STATUSES, JobStatus, LocalModel, ModelPull, model_id_validator
from inference.services import default_model_name, model_import

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_SECONDS = 0.5
DEFAULT_RESERVE_BYTES = 1024**3  # kept free on the models' disk
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_SECONDS = 2.0  # then 4, 8, 16 ... (at most 60)
CURATED_FILE = Path(__file__).resolve().parent / "curated_models.toml"
QUANT_ARGUMENT = re.compile(r"[A-Za-z0-9_-]{1,32}")


class PullCancelled(Exception):
    pass


def _setting(name: str, default, parse):
    configured = getattr(settings, name, None)
    return configured if configured is not None else parse(name, default)


def reserve_bytes() -> int:
    from config.env import env_bytes, env_str

    def parse(name: str, default: int) -> int:
        return 0 if env_str(name).strip() == "0" else env_bytes(name, default)

    return int(_setting("HEARTH_PULL_RESERVE_BYTES", DEFAULT_RESERVE_BYTES, parse))


def retries() -> int:
    from config.env import env_int

    return int(_setting("HEARTH_PULL_RETRIES", DEFAULT_RETRIES, lambda n, d: env_int(n, d, minimum=0)))


def backoff_seconds() -> float:
    from config.env import env_str

    return float(_setting("HEARTH_PULL_BACKOFF_SECONDS", DEFAULT_BACKOFF_SECONDS,
                          lambda n, d: float(env_str(n, str(d)) or d)))


def pulls_dir() -> Path:
    return Path(settings.MODELS_DIR) / ".pulls"


def staging_dir(repo: str, commit: str) -> Path:
    return pulls_dir() / f"{repo.replace('/', '--')}@{commit}"


# ---------------------------------------------------------------------------------------------------------
# Starting, cancelling, sending


def pull_start(repo: str, *, file: str = "", quant: str = "", revision: str = "main", name: str = "", owner=None,
               dispatch: bool = True) -> ModelPull:
    """Queue a pull (nothing is fetched here). The same pull asked again while it runs is that pull."""
    repo, revision = hub.check_repo_id(repo), hub.check_revision(revision)
    file, quant, name = (file or "").strip(), (quant or "").strip(), (name or "").strip()
    if file and quant:
        raise InvalidRequest("Give a GGUF file or a quantization, not both.")
    if file and (not file.lower().endswith(".gguf") or ".." in file or file.startswith("/") or len(file) > 500):
        raise InvalidRequest(f"{file!r} is not a GGUF file name of the repo (such as Qwen3-0.6B-Q8_0.gguf).")
    if quant and not QUANT_ARGUMENT.fullmatch(quant):
        raise InvalidRequest(f"{quant!r} is not a quantization (such as Q4_K_M or Q8_0).")
    if name:
        check_name_free(name)
    hub.check_online()
    same = ModelPull.objects.filter(repo=repo, revision=revision, file=file, quant=quant,
                                    status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).first()
    if same is not None and (not name or name == same.result_name):
        return same
    sweep_stale()
    pull = ModelPull.objects.create(repo=repo, revision=revision, file=file, quant=quant, result_name=name,
                                    owner=owner)
    audit_record(owner, "model.pull", pull.label, name=name)
    if dispatch:
        pull_id = pull.pk
        transaction.on_commit(lambda: _send(pull_id))
    return pull


def check_name_free(name: str) -> str:
    try:
        model_id_validator(name)
    except ValidationError as error:
        raise InvalidRequest(f"{name!r} is not a valid model id: {error.messages[0]}") from None
    if LocalModel.objects.filter(name=name).exists():
        raise InvalidRequest(f"The library already has {name!r}; choose another name.")
    if ModelPull.objects.filter(result_name=name, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exists():
        raise InvalidRequest(f"A pull running now will add {name!r}; choose another name.")
    return name


def _send(pull_id: int) -> None:
    """To the embedded server's puller thread, else a puller on the "pulls" queue (never a generation worker)."""
    if settings.HEARTH_EMBEDDED_WORKER:
        from inference.embedded import pull_in_background

        pull_in_background(pull_id)
        return
    from inference.tasks import PULL_QUEUE, model_pull

    model_pull.apply_async(args=[pull_id], queue=PULL_QUEUE)


def puller_missing() -> str:
    """Why a pull started now would wait (no puller is alive), or "" when one will take it."""
    from inference.presence import PULLER, get_presence

    if settings.HEARTH_EMBEDDED_WORKER or get_presence(PULLER).live_workers():
        return ""
    return ("No puller is running, so it waits in the queue until one starts: `docker compose up -d puller`, or "
            "`make puller` beside `make worker`.")


def pull_cancel(pull: ModelPull) -> bool:
    """Stop a pull: a queued one at once; a running one at its next progress write (within a second), when its
    worker removes what it fetched. False when it had already finished."""
    now = timezone.now()
    if ModelPull.objects.filter(pk=pull.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, error_text="Cancelled.", finished_at=now, phase=""):
        pull.refresh_from_db()
        if pull.commit:  # a pull queued again after its puller died: its partial files
            shutil.rmtree(staging_dir(pull.repo, pull.commit), ignore_errors=True)
        return True
    return bool(ModelPull.objects.filter(pk=pull.pk, status=JobStatus.RUNNING).update(
        status=JobStatus.CANCELLED, error_text="Cancelled."))


def resume_orphaned_pulls(puller: str) -> int:
    """Pulls whose puller died mid-way (its name no longer beats): queued again and sent; they resume from the bytes
    on disk."""
    from inference.presence import CONVERTER, PULLER, get_presence

    alive = set(get_presence(PULLER).live_workers()) | set(get_presence(CONVERTER).live_workers()) | {puller}
    orphans = [pk for pk, worker in ModelPull.objects.filter(status=JobStatus.RUNNING).values_list("pk", "worker")
               if worker not in alive]
    for pk in orphans:
        if ModelPull.objects.filter(pk=pk, status=JobStatus.RUNNING).update(status=JobStatus.QUEUED, worker=""):
            _send(pk)
    return len(orphans)


def sweep_stale(max_age_hours: float | None = None) -> list[str]:
    """Partial downloads of failed pulls nobody started again for HEARTH_UPLOAD_ABANDON_HOURS: removed."""
    hours = max_age_hours if max_age_hours is not None else settings.HEARTH_UPLOAD_ABANDON_HOURS
    folder = pulls_dir()
    if not folder.is_dir():
        return []
    active = {staging_dir(repo, commit).name for repo, commit in ModelPull.objects.filter(
        status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exclude(commit="").values_list("repo", "commit")}
    cutoff = time.time() - hours * 3600
    removed = []
    for entry in folder.iterdir():
        if entry.name in active:
            continue
        newest = max((p.stat().st_mtime for p in entry.rglob("*")), default=entry.stat().st_mtime)
        if newest < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


# ---------------------------------------------------------------------------------------------------------
# Running


@dataclass
class Snapshot:
    """What the progress callback of `pull_run` gets (the management command prints it)."""

    phase: str
    current_file: str
    bytes_done: int
    bytes_total: int
    bytes_per_second: float


class _Progress:
    """Counts the bytes (the download's thread adds them), writes them and the speed to the row every half second
    (the pull's thread); a write that finds the row no longer running means the pull was cancelled."""

    def __init__(self, pull_id: int, total: int, on_progress: Callable[[Snapshot], None] | None):
        self.pull_id, self.total, self.on_progress = pull_id, total, on_progress
        self.done = 0
        self.phase, self.current_file = ModelPull.Phase.DOWNLOADING, ""
        self.speed = 0.0
        self._last_time, self._last_done = time.monotonic(), 0

    def set(self, *, phase: str | None = None, current_file: str | None = None) -> None:
        self.phase = phase or self.phase
        self.current_file = self.current_file if current_file is None else current_file
        self.write(force=True)

    def add(self, count: int) -> None:
        self.done += count

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._last_time
        if not force and elapsed < PROGRESS_WRITE_INTERVAL_SECONDS:
            return
        if elapsed >= 0.2:  # a forced write right after another says nothing about the speed
            instant = max(0, self.done - self._last_done) / elapsed
            self.speed = instant if not self.speed else 0.6 * instant + 0.4 * self.speed
            self._last_time, self._last_done = now, self.done
        updated = ModelPull.objects.filter(pk=self.pull_id, status=JobStatus.RUNNING).update(
            bytes_done=self.done, bytes_per_second=self.speed, phase=self.phase, current_file=self.current_file)
        if not updated:
            raise PullCancelled
        if self.on_progress is not None:
            self.on_progress(Snapshot(self.phase, self.current_file, self.done, self.total, self.speed))

    def wait(self, seconds: float) -> None:
        """Sleep (before a retry), still noticing a cancel."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, PROGRESS_WRITE_INTERVAL_SECONDS))
            self.write(force=True)


def pull_run(pull_id: int, worker: str = "", on_progress: Callable[[Snapshot], None] | None = None) -> ModelPull:
    """Run a queued pull to the end. A pull already taken (a message delivered twice) is left to its worker."""
    claimed = ModelPull.objects.filter(pk=pull_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, worker=worker, started_at=timezone.now(), phase=ModelPull.Phase.RESOLVING,
        error_code="", error_text="")
    pull = ModelPull.objects.get(pk=pull_id)
    if not claimed:
        return pull
    staging, placed = None, None
    try:
        found = _with_retries(lambda: hub.listing(pull.repo, pull.revision), None)
        chosen = hub.plan(found, file=pull.file, quant=pull.quant)
        name = pull.result_name or _default_name(found.repo, chosen)
        existing = _already_pulled(found, chosen)
        if existing is not None:  # pulled before: nothing to fetch
            _finish(pull.pk, existing)
            return ModelPull.objects.get(pk=pull.pk)
        if not pull.result_name:
            check_name_free(name)
        planned = [f.to_dict() for f in chosen.files]
        busy = (ModelPull.objects.filter(status=JobStatus.RUNNING, repo=found.repo, commit=found.commit)
                .exclude(pk=pull.pk).only("pk", "files").first())
        if busy is not None and busy.files == planned:  # (another puller: they would share the .part files)
            raise InvalidRequest(f"Pull #{busy.pk} is fetching the same files of {found.repo} now; its model joins "
                                 "the library when it is done.")
        staging = staging_dir(found.repo, found.commit)
        if not ModelPull.objects.filter(pk=pull.pk, status=JobStatus.RUNNING).update(
                commit=found.commit, format=chosen.format, files=planned,
                bytes_total=chosen.size, result_name=name, phase=ModelPull.Phase.DOWNLOADING):
            raise PullCancelled
        progress = _Progress(pull.pk, chosen.size, on_progress)
        _check_disk(chosen, staging)
        for file in chosen.files:
            _fetch(found, file, staging, progress)
        progress.set(phase=ModelPull.Phase.IMPORTING, current_file="")
        imported, placed = _place(chosen, staging, name)
        model = _import(imported, name, found, chosen)
        if not _finish(pull.pk, model):  # cancelled while importing
            model.delete()
            raise PullCancelled
        placed = None
        shutil.rmtree(staging, ignore_errors=True)
    except PullCancelled:
        for path in (staging, placed):
            _remove(path)
        ModelPull.objects.filter(pk=pull.pk).update(phase="", finished_at=timezone.now())
    except Exception as error:
        _remove(placed)
        translated = hub.translate(error, pull.repo, pull.revision) if not isinstance(error, EngineError) else None
        error = translated or error
        if isinstance(error, EngineError):
            code, message = getattr(error, "code", "") or "failed", error.message
        else:
            log.exception("pull %s failed", pull.pk)
            code, message = "internal", f"Internal error: {type(error).__name__}: {error}. The server log has details."
        if staging is not None and code not in ("network",):  # a network failure keeps its bytes to resume
            _remove(staging)
        ModelPull.objects.filter(pk=pull.pk, status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED, error_code=code[:32], error_text=message, finished_at=timezone.now(), phase="")
        ModelPull.objects.filter(pk=pull.pk).exclude(finished_at__isnull=False).update(finished_at=timezone.now())
    return ModelPull.objects.get(pk=pull.pk)


def _default_name(repo: str, chosen: hub.Plan) -> str:
    if chosen.format == "gguf":
        first = Path(chosen.files[0].name).name
        split = hub.SPLIT.match(first)
        return default_model_name(Path(split["stem"] + ".gguf" if split else first))
    return default_model_name(Path(repo.split("/")[-1] + ".repo"))  # (a suffix to drop: "Qwen2.5-0.5B" keeps ".5B")


def _already_pulled(found: hub.Listing, chosen: hub.Plan) -> LocalModel | None:
    names = [f.name for f in chosen.files]
    for model in LocalModel.objects.filter(provenance__repo=found.repo, provenance__commit=found.commit):
        if [f.get("name") for f in model.provenance.get("files", [])] == names and Path(model.path).exists():
            return model
    return None


def _with_retries(action: Callable, progress: _Progress | None):
    """`action()`, again after a network failure (HEARTH_PULL_RETRIES times, with growing waits)."""
    attempt = 0
    while True:
        try:
            return action()
        except hub.HubError as error:
            if error.code != "network" or attempt >= retries():
                raise
            wait = min(60.0, backoff_seconds() * 2**attempt)
            attempt += 1
            log.warning("pull: %s; retry %d in %.1f s", error.message, attempt, wait)
            if progress is not None:
                progress.wait(wait)
            else:
                time.sleep(wait)


def _check_disk(chosen: hub.Plan, staging: Path) -> None:
    """Before a byte is fetched: what is left to fetch, plus HEARTH_PULL_RESERVE_BYTES, must fit."""
    have = 0
    for file in chosen.files:
        target = staging / file.name
        part = _part_path(target)
        if target.is_file():
            have += min(file.size, target.stat().st_size)
        elif part.is_file():
            have += min(file.size, part.stat().st_size)
    needed = max(0, chosen.size - have)
    library = Path(settings.MODELS_DIR)
    library.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(library).free
    reserve = reserve_bytes()
    if needed + reserve > free:
        raise hub.HubError(
            f"Not enough disk space in {library}: this pull needs {_size(needed)} more and Hearth keeps "
            f"{_size(reserve)} free (HEARTH_PULL_RESERVE_BYTES), but only {_size(free)} is free. Delete models you "
            "no longer use (or choose a smaller quantization) and pull again.", code="disk_space", status=507)


def progress_text(phase: str, current_file: str, done: int, total: int, speed: float) -> str:
    """"downloading x.gguf: 12.3 MB of 45.6 MB (27%), 3.2 MB/s, 10 s left" (the pages and pull_model)."""
    line = phase + (f" {current_file}" if current_file else "")
    if total:
        line += f": {_size(done)} of {_size(total)} ({100 * done / total:.0f}%)"
    if speed > 0 and phase == ModelPull.Phase.DOWNLOADING:
        line += f", {_size(speed)}/s"
        if total > done:
            line += f", {_duration((total - done) / speed)} left"
    return line


def pull_progress_text(pull: ModelPull) -> str:
    if pull.status == JobStatus.QUEUED:
        return "waiting for the puller" + (f" ({_size(pull.bytes_done)} fetched before)" if pull.bytes_done else "")
    if pull.status != JobStatus.RUNNING:
        return f"{_size(pull.bytes_done)} of {_size(pull.bytes_total)}" if pull.bytes_total else ""
    return progress_text(pull.phase or "resolving", pull.current_file, pull.bytes_done, pull.bytes_total,
                         pull.bytes_per_second)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _held(part: Path, file: hub.RepoFile) -> int:
    return min(file.size, part.stat().st_size) if part.is_file() else 0


def _watched(progress: _Progress, action: Callable[[threading.Event], object]):
    """`action(stop)` on a thread of its own while this one writes the progress every half second, and so notices a
    cancel at once, even while the download waits on a stalled connection (`stop` is set then; the download stops
    at its next chunk). Returns what the action returns, or raises what it raised."""
    stop = threading.Event()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = action(stop)
        except BaseException as error:  # handed to the pull's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="hearth-pull-io", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(PROGRESS_WRITE_INTERVAL_SECONDS)
            progress.write()
    except BaseException:
        stop.set()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _fetch(found: hub.Listing, file: hub.RepoFile, staging: Path, progress: _Progress) -> None:
    """One file into staging, verified. A verified file from an earlier run is kept; a `.part` resumes."""
    target = staging / file.name
    part = _part_path(target)
    if target.is_file() and target.stat().st_size == file.size:
        progress.add(file.size)
        return
    progress.set(phase=ModelPull.Phase.DOWNLOADING, current_file=file.name)
    before = progress.done  # the bytes of the files before this one

    def download(stop: threading.Event) -> str:
        def on_bytes(count: int) -> None:
            if stop.is_set():
                raise PullCancelled
            progress.add(count)

        return hub.download(found.repo, found.commit, file, part, on_bytes)

    def attempt() -> str:
        progress.done = before + _held(part, file)  # what the .part holds, after a failed attempt too
        return _watched(progress, download)

    for tries in (1, 2):  # a corrupted download is fetched once more, from its first byte
        etag = _with_retries(attempt, progress)
        progress.set(phase=ModelPull.Phase.VERIFYING)
        try:
            _watched(progress, lambda _stop, etag=etag: hub.verify(part, file, etag))
        except hub.HubError:
            part.unlink(missing_ok=True)
            if tries == 2:
                raise
            log.warning("pull: %s did not match the hub's checksum; fetching it again", file.name)
            progress.set(phase=ModelPull.Phase.DOWNLOADING)
            continue
        part.rename(target)
        return


def _place(chosen: hub.Plan, staging: Path, name: str) -> tuple[Path, Path]:
    """Move the verified files into the library: (the path to import, what to remove should the import fail). A GGUF
    file: MODELS_DIR/<name>.gguf; a split GGUF: its parts side by side in MODELS_DIR/<name>/ (llama.cpp finds the
    others beside the first); a Hugging Face folder: MODELS_DIR/<name>/."""
    library = Path(settings.MODELS_DIR)
    if chosen.format == "gguf" and len(chosen.files) == 1:
        destination = library / f"{name}.gguf"
        if destination.exists():
            raise InvalidRequest(f"{destination} already exists; remove it or choose another name.")
        (staging / chosen.files[0].name).rename(destination)
        return destination, destination
    folder = library / name
    if folder.exists():
        raise InvalidRequest(f"{folder} already exists; remove it or choose another name.")
    folder.mkdir(parents=True)
    for file in chosen.files:
        (staging / file.name).rename(folder / Path(file.name).name)
    return (folder / Path(chosen.files[0].name).name if chosen.format == "gguf" else folder), folder


def _import(placed: Path, name: str, found: hub.Listing, chosen: hub.Plan) -> LocalModel:
    try:
        model = model_import(placed, name=name, audit_action=None)  # recorded when the pull was asked for
    except EngineError as error:
        raise hub.HubError(f"{found.repo} at {found.commit[:12]} did not pass the library's check: {error.message}",
                           code="invalid_model") from None
    model.provenance = {
        "source": "huggingface", "repo": found.repo, "revision": found.revision, "commit": found.commit,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in chosen.files],
        "quant": chosen.quant, "pulled_at": timezone.now().isoformat(timespec="seconds"),
    }
    fields = ["provenance"]
    if chosen.format == "gguf" and len(chosen.files) > 1:  # the library row counts every part
        model.provenance["folder"] = str(placed.parent)
        model.size_bytes = sum(p.stat().st_size for p in placed.parent.iterdir() if p.is_file())
        model.parameter_count = _split_parameter_count(placed.parent, chosen) or model.parameter_count
        fields += ["size_bytes", "parameter_count"]
    model.save(update_fields=fields)
    return model


def _split_parameter_count(folder: Path, chosen: hub.Plan) -> int:
    from inference.engine.formats import read_gguf_header

    total = 0
    for file in chosen.files:
        try:
            total += sum(t.n_elements for t in read_gguf_header(folder / Path(file.name).name).tensors)
        except EngineError:
            return 0
    return total


def _finish(pull_id: int, model: LocalModel) -> bool:
    return bool(ModelPull.objects.filter(pk=pull_id, status=JobStatus.RUNNING).update(
        status=JobStatus.SUCCEEDED, result=model, result_name=model.name, phase="", current_file="",
        bytes_done=F("bytes_total"), finished_at=timezone.now()))


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------------------------------------------------
# Updates, the web form's file list, the curated list


def update_check(model: LocalModel) -> tuple[str, bool]:
    """(the newest commit on the model's revision name, whether it is newer than the one pulled); recorded on the
    model (provenance "latest_commit", "checked_at")."""
    provenance = model.provenance or {}
    if provenance.get("source") != "huggingface" or not provenance.get("repo"):
        raise InvalidRequest(f"{model.name} was not pulled from the Hugging Face Hub, so there is nothing to check.")
    latest = _with_retries(lambda: hub.latest_commit(provenance["repo"], provenance.get("revision") or "main"), None)
    model.provenance = {**provenance, "latest_commit": latest,
                        "checked_at": timezone.now().isoformat(timespec="seconds")}
    model.save(update_fields=["provenance"])
    return latest, bool(latest) and latest != provenance.get("commit")


def update_pull_start(model: LocalModel, owner=None, *, dispatch: bool = True) -> ModelPull:
    """Pull the newer commit of the model's revision as a model of its own (<name>-<commit>); the old one stays
    until an admin deletes it."""
    provenance = model.provenance or {}
    latest = provenance.get("latest_commit") or ""
    if not latest or latest == provenance.get("commit"):
        raise InvalidRequest(f"{model.name} is up to date as far as the last check knows: check for an update first.")
    first = (provenance.get("files") or [{}])[0].get("name", "")
    gguf = model.format == "gguf"
    return pull_start(provenance["repo"], file=first if gguf else "", revision=provenance.get("revision") or "main",
                      name=f"{model.name}-{latest[:7]}"[:128], owner=owner, dispatch=dispatch)


def repo_files(repo: str, revision: str = "main") -> dict:
    """What the library page's pull form lists: a GGUF repo's models (size, quantization, the default marked), or
    the files a safetensors folder would fetch."""
    found = hub.listing(repo, revision)
    choices = hub.gguf_choices(found.files)
    if choices:
        default = hub.default_gguf(choices)
        return {"repo": found.repo, "commit": found.commit, "format": "gguf",
                "files": [{**c.to_dict(), "default": c is default} for c in choices]}
    chosen = hub.plan(found)
    return {"repo": found.repo, "commit": found.commit, "format": chosen.format, "size": chosen.size,
            "files": [{"name": f.name, "size": f.size} for f in chosen.files]}


@dataclass(frozen=True)
class Curated:
    name: str
    repo: str
    file: str
    size: int
    context: int
    licence: str
    note: str = ""


@cache
def _curated(path: str, mtime: float) -> tuple[Curated, ...]:
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    entries = []
    for item in data.get("model", []):
        try:
            entries.append(Curated(name=str(item["name"]), repo=str(item["repo"]), file=str(item["file"]),
                                   size=int(item.get("size", 0)), context=int(item.get("context", 0)),
                                   licence=str(item.get("licence", "")), note=str(item.get("note", ""))))
        except (KeyError, TypeError, ValueError):
            log.warning("curated_models.toml: an entry lacks name, repo or file: %r", item)
    return tuple(entries)


def curated_models() -> tuple[Curated, ...]:
    """The short list of good small models on the library page (inference/curated_models.toml)."""
    try:
        return _curated(str(CURATED_FILE), CURATED_FILE.stat().st_mtime)
    except (OSError, tomllib.TOMLDecodeError):
        log.warning("could not read %s", CURATED_FILE, exc_info=True)
        return ()


ERROR_STATUS = {"not_found": 404, "revision_not_found": 404, "file_not_found": 404, "gated": 403, "network": 502,
                "disk_space": 507, "offline": 503, "internal": 502}


def error_status(code: str) -> int:
    """The HTTP status an API answers a pull that ended with `code` (4xx: what the asker can change)."""
    return ERROR_STATUS.get(code or "", 400)


def pulled_model(reference: str, among=None) -> LocalModel | None:
    """The library model pulled as `reference` ("hf.co/owner/name:Q4_K_M", "owner/name"): the latest pull of that
    repo, of that quantization or file when the name has one; `among`: only those models (a queryset)."""
    try:
        repo, tag = hub.parse_reference(reference)
    except hub.HubError:
        return None
    models = LocalModel.objects.all() if among is None else among
    for model in models.filter(provenance__repo__iexact=repo).order_by("-created_at"):
        provenance = model.provenance
        files = [Path(f.get("name", "")).name.lower() for f in provenance.get("files", [])]
        if not tag or tag.lower() in (str(provenance.get("quant", "")).lower(), *files):
            return model
    return None


def recent_pulls(limit: int = 20):
    """The pulls the library and jobs pages show: unfinished ones, then the latest finished."""
    unfinished = list(ModelPull.objects.exclude(status__in=FINISHED_STATUSES).select_related("result")
                      .order_by("created_at"))
    finished = list(ModelPull.objects.filter(status__in=FINISHED_STATUSES,
                                             created_at__gte=timezone.now() - timedelta(days=7))
                    .select_related("result").order_by("-created_at")[:limit])
    return unfinished + finished
