"""Admins upload models in chunks: a GGUF file, or a Hugging Face directory as a zip or as separate files.

The bytes are checked before anything is imported: a GGUF must start with its magic; a zip may hold no
absolute path, no `..`, no link, nothing beyond the size limit, and no entry compressed beyond a sane ratio
(a zip bomb); a folder sent as files is flat, its names plain (no path, no `..`, nothing hidden, nothing
pickled) and its total within the size limit. The result goes through `inference.services.model_import`,
which validates the model itself. Uploads nobody finishes are swept away after HEARTH_UPLOAD_ABANDON_HOURS.

On disk, under `MODELS_DIR/.uploads/`: `<id>.part` for a single file, `<id>/<name>/` for a folder's files."""

from __future__ import annotations

import logging
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from datetime import timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inference.engine.base import EngineError
from inference.engine.formats import PICKLE_SUFFIXES, TOKENIZER_FILES, UNPICKLE_ADVICE, _starts_like_pickle
from inference.models import LocalModel
from inference.services import default_model_name, model_import
from webui.models import Upload

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024**3
MAX_CHUNK_BYTES = 8 * 1024**2
MAX_COMPRESSION_RATIO = 200  # deflate reaches ~10 on weights, ~1000 on a bomb
ALLOWED_SUFFIXES = (".gguf", ".zip")
MAX_FOLDER_FILES = 512
# A file of a folder upload: a plain name (no path), not hidden, printable ASCII only.
FOLDER_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
UNPACKING_SUFFIX = ".unpacking"  # a zip of one folder: unpacked, then that folder moved up into its place
log = logging.getLogger(__name__)


class UploadRefused(EngineError):
    def __init__(self, message: str, code: str = "upload_refused", status: int = 400):
        super().__init__(message, code=code, status=status)


def max_upload_bytes() -> int:
    return int(getattr(settings, "HEARTH_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))


def uploads_dir() -> Path:
    path = Path(settings.MODELS_DIR) / ".uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def part_path(upload: Upload) -> Path:
    return uploads_dir() / f"{upload.id}.part"


def staging_dir(upload: Upload) -> Path:
    """Where a folder upload's files arrive: `.uploads/<id>/<model name>/` (so messages name the model)."""
    return uploads_dir() / str(upload.id) / upload.name


def _check_new_model_name(name: str) -> str:
    name = name.strip()
    if not MODEL_NAME.fullmatch(name):
        raise UploadRefused("A model name may use letters, digits, '.', '_', ':' and '-'.")
    if LocalModel.objects.filter(name=name).exists():
        raise UploadRefused(f"The library already has a model named {name!r}; pick another name.", code="exists",
                            status=409)
    return name


def _check_total(size: int) -> None:
    limit = max_upload_bytes()
    if size > limit:
        raise UploadRefused(f"That is {size:,} bytes; this server accepts at most {limit:,}.", code="too_large",
                            status=413)


def upload_start(*, owner, filename: str, size: int, name: str = "") -> Upload:
    upload_sweep()
    filename = PurePosixPath(str(filename).replace("\\", "/")).name[:255]
    if not filename.lower().endswith(ALLOWED_SUFFIXES):
        raise UploadRefused("Upload a .gguf file, or a Hugging Face model directory as a .zip or as its files.")
    if size <= 0:
        raise UploadRefused("That file is empty.")
    _check_total(size)
    name = _check_new_model_name(name or default_model_name(Path(filename)))
    upload = Upload.objects.create(owner=owner, filename=filename, name=name, size=size)
    part_path(upload).touch()
    return upload


def check_folder_file_name(name: str) -> None:
    """A folder upload is flat: every name is a plain file name. Paths, `..`, hidden files, odd characters and
    pickled weights are refused before a byte arrives."""
    if "/" in name or "\\" in name:
        raise UploadRefused(f"{name!r} is a path; a folder upload takes the files of one flat folder only.")
    if name.startswith("."):
        raise UploadRefused(f"{name!r} is a hidden file; leave it out of the upload.")
    if ".." in name:
        raise UploadRefused(f"{name!r} contains '..'; refused.")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise UploadRefused(f"{name} is a pickled PyTorch file. {UNPICKLE_ADVICE}.", code="pickle_refused")
    if not FOLDER_FILE_NAME.fullmatch(name):
        raise UploadRefused(f"{name!r} is not a file name Hearth accepts in a model folder (letters, digits and "
                            "'.', '_', '+', '-'; at most 200 characters).")


def upload_folder_start(*, owner, files: list, name: str, folder: str = "") -> Upload:
    """Start a Hugging Face folder sent as separate files: [{name, size}, ...]. Each file then arrives in
    chunks like a single upload (`upload_chunk(..., file_name=...)`); the total counts against the limit."""
    upload_sweep()
    if not isinstance(files, list) or not files:
        raise UploadRefused("Send the folder's files as a list of {name, size}.")
    if len(files) > MAX_FOLDER_FILES:
        raise UploadRefused(f"That folder has {len(files)} files; a model folder has at most {MAX_FOLDER_FILES}.")
    entries, seen = [], set()
    for item in files:
        try:
            file_name, size = str(item["name"]), int(item["size"])
        except (KeyError, TypeError, ValueError):
            raise UploadRefused("Each file needs a name and a size in bytes.") from None
        check_folder_file_name(file_name)
        if file_name.lower() in seen:
            raise UploadRefused(f"{file_name} is listed twice.")
        if size < 0:
            raise UploadRefused(f"{file_name} has a negative size.")
        seen.add(file_name.lower())
        entries.append({"name": file_name, "size": size, "received": 0})
    missing = [label for label, present in (
        ("config.json", "config.json" in seen),
        ("*.safetensors weights", any(n.endswith(".safetensors") for n in seen)),
        (" or ".join(TOKENIZER_FILES), any(t in seen for t in TOKENIZER_FILES)),
    ) if not present]
    if missing:
        raise UploadRefused("A Hugging Face model folder needs config.json, *.safetensors weights and "
                            f"tokenizer.json or tokenizer.model; this one lacks {', '.join(missing)}.")
    total = sum(e["size"] for e in entries)
    _check_total(total)
    if not str(name).strip():
        raise UploadRefused("Give the model a name in the library.")
    name = _check_new_model_name(str(name))
    label = PurePosixPath(str(folder).replace("\\", "/")).name[:255] or name
    upload = Upload.objects.create(owner=owner, filename=label, name=name, size=total, files=entries)
    staging = staging_dir(upload)
    staging.mkdir(parents=True)
    for entry in entries:
        (staging / entry["name"]).touch()
    return upload


def upload_chunk(upload: Upload, offset: int, data: bytes, file_name: str | None = None) -> Upload:
    """Append one chunk (to `file_name` of a folder upload). The offset must be where that file ends now, so a
    retried chunk is never written twice."""
    with transaction.atomic():
        upload = Upload.objects.select_for_update().get(pk=upload.pk)
        if upload.status != Upload.Status.RECEIVING:
            raise UploadRefused(f"This upload is {upload.status}. {upload.error_text}".strip(), code="finished",
                                status=409)
        entry = None
        if upload.files:
            entry = next((e for e in upload.files if e["name"] == file_name), None)
            if entry is None:
                raise UploadRefused(f"This upload has no file named {file_name!r}; pass ?file=NAME.",
                                    code="no_such_file", status=404)
            target, received, size = staging_dir(upload) / entry["name"], entry["received"], entry["size"]
        else:
            target, received, size = part_path(upload), upload.received, upload.size
        if offset != received:
            raise UploadRefused(f"Expected the chunk at byte {received}.", code="wrong_offset", status=409)
        if received + len(data) > size:
            raise UploadRefused("That is more data than the file's announced size.")
        gone = not target.is_file()
        if not gone:
            with target.open("r+b") as part:
                part.seek(offset)
                part.write(data)
                part.truncate()
            if entry is not None:
                entry["received"] += len(data)
            upload.received += len(data)
            upload.save(update_fields=["received", "files", "updated_at"])
    if gone:
        _mark_failed(upload, "Its partial files are gone (swept away as abandoned); start the upload again.")
        raise UploadRefused("This upload's partial files are gone; start the upload again.", code="gone",
                            status=410)
    return upload


def _mark_failed(upload: Upload, reason: str) -> None:
    upload.status, upload.error_text = Upload.Status.FAILED, reason
    upload.save(update_fields=["status", "error_text", "updated_at"])


def check_zip(path: Path, limit: int) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UploadRefused("That is not a valid zip file.") from None
    with archive:
        total = 0
        for info in archive.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
                raise UploadRefused(f"The zip holds an absolute path ({name!r}); refused.")
            if ".." in parts:
                raise UploadRefused(f"The zip holds a path that climbs out of its folder ({name!r}); refused.")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UploadRefused(f"The zip holds a link ({name!r}); refused.")
            if info.file_size and info.compress_size == 0 or (
                info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO
            ):
                raise UploadRefused(f"{name!r} is compressed beyond {MAX_COMPRESSION_RATIO}:1; refused as a zip bomb.")
            total += info.file_size
            if total > limit:
                raise UploadRefused(f"The zip unpacks to more than {limit:,} bytes; refused.")
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise UploadRefused(f"The zip holds {name}, a pickled PyTorch file. {UNPICKLE_ADVICE}; leave it "
                                    "out of the zip and upload again.", code="pickle_refused")


def extract_zip(path: Path, destination: Path) -> Path:
    """Unpack (after `check_zip`) writing each member ourselves, never following what the archive says."""
    destination.mkdir(parents=True)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            target = destination.joinpath(*PurePosixPath(info.filename).parts).resolve()
            if not target.is_relative_to(destination.resolve()):
                raise UploadRefused(f"{info.filename!r} would land outside the model folder; refused.")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
                raise UploadRefused(f"The zip is damaged and cannot be unpacked ({info.filename}: {error}); "
                                    "create it again and upload it again.", code="bad_zip") from None
    entries = [p for p in destination.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    if len(entries) == 1 and entries[0].is_dir():  # a zip of a folder: the model is that folder's content
        inner = destination.with_name(destination.name + UNPACKING_SUFFIX)
        entries[0].rename(inner)
        shutil.rmtree(destination)
        inner.rename(destination)
    return destination


def refuse_pickles(folder: Path) -> None:
    """Nothing pickled may sit in a model folder, even beside safetensors that would be loaded instead."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".safetensors") and (
            path.name.lower().endswith(PICKLE_SUFFIXES) or _starts_like_pickle(path)
        ):
            raise UploadRefused(f"{path.relative_to(folder)} holds pickled data. {UNPICKLE_ADVICE}.",
                                code="pickle_refused")


def place_folder(upload: Upload, destination: Path) -> Path:
    """Check a folder upload's staging folder (exactly the announced files, regular files, nothing pickled,
    a loadable Hugging Face model) and move it into the library."""
    from inference.engine.formats import detect_format

    staging = staging_dir(upload)
    present = sorted(p.name for p in staging.iterdir())
    if present != sorted(e["name"] for e in upload.files):
        raise UploadRefused("The upload's staging folder does not hold the announced files; start again.")
    for path in staging.iterdir():
        if path.is_symlink() or not path.is_file():
            raise UploadRefused(f"{path.name} is not a regular file; refused.")
    refuse_pickles(staging)
    detect_format(staging)
    staging.rename(destination)
    shutil.rmtree(staging.parent, ignore_errors=True)
    return destination


def _discard_partial(upload: Upload) -> None:
    part_path(upload).unlink(missing_ok=True)
    shutil.rmtree(uploads_dir() / str(upload.id), ignore_errors=True)


def upload_finish(upload: Upload) -> LocalModel:
    """Validate what arrived and import it. A refused upload leaves nothing behind: its partial files and whatever
    was unpacked are deleted, and the upload is marked failed with the reason (never left `receiving`)."""
    if upload.status == Upload.Status.IMPORTED and upload.model_id:
        return upload.model
    if upload.status != Upload.Status.RECEIVING:
        raise UploadRefused(f"This upload is {upload.status}. {upload.error_text}".strip(), code="finished",
                            status=409)
    if upload.received != upload.size:
        raise UploadRefused(f"Only {upload.received:,} of {upload.size:,} bytes have arrived.", code="incomplete",
                            status=409)
    is_gguf = not upload.files and upload.filename.lower().endswith(".gguf")
    destination = Path(settings.MODELS_DIR) / (upload.name + (".gguf" if is_gguf else ""))
    try:
        if destination.exists():  # someone else's: refused before anything of ours is placed there
            raise UploadRefused(f"{destination.name} already exists in the models folder; pick another name.")
        try:
            model = model_import(_place(upload, destination, is_gguf), name=upload.name, actor=upload.owner,
                                 audit_action="model.upload")
        except BaseException:
            _remove(destination)
            _remove(destination.with_name(destination.name + UNPACKING_SUFFIX))
            raise
    except Exception as error:
        _discard_partial(upload)
        refusal = error if isinstance(error, EngineError) else UploadRefused(
            f"Hearth could not import it ({type(error).__name__}); the server log has the details.",
            code="internal_error", status=500)
        if refusal is not error:
            log.error("importing upload %s failed", upload.id, exc_info=error)
        _mark_failed(upload, refusal.message)
        raise refusal from (None if refusal is error else error)
    upload.status, upload.model = Upload.Status.IMPORTED, model
    upload.save(update_fields=["status", "model", "updated_at"])
    return model


def _place(upload: Upload, destination: Path, is_gguf: bool) -> Path:
    """Put what arrived at `destination` once it passes the checks of its kind; returns the model's path."""
    part = part_path(upload)
    if upload.files:
        return place_folder(upload, destination)
    if is_gguf:
        with part.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise UploadRefused("That file is not a GGUF model (it does not start with 'GGUF').")
        part.rename(destination)
        return destination
    check_zip(part, max_upload_bytes())
    extract_zip(part, destination)
    refuse_pickles(destination)
    part.unlink()
    return destination


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def upload_cancel(upload: Upload) -> None:
    _discard_partial(upload)
    upload.delete()


def _last_write(path: Path) -> float:
    """When anything under `path` was last written (a folder's own mtime does not change when a file grows)."""
    if path.is_dir() and not path.is_symlink():
        return max([path.lstat().st_mtime] + [p.lstat().st_mtime for p in path.rglob("*")])
    return path.lstat().st_mtime


def upload_sweep(max_age_hours: float | None = None) -> list[str]:
    """Remove the `.part` files and staging folders of uploads that received nothing for
    HEARTH_UPLOAD_ABANDON_HOURS; their uploads are marked failed. Returns the names removed."""
    hours = max_age_hours if max_age_hours is not None else settings.HEARTH_UPLOAD_ABANDON_HOURS
    cutoff = time.time() - hours * 3600
    reason = f"Abandoned: nothing arrived for {hours:g} hours, so its partial files were removed."
    removed = []
    for entry in sorted(uploads_dir().iterdir()):
        try:
            if _last_write(entry) >= cutoff:
                continue
        except FileNotFoundError:
            continue  # finished or cancelled meanwhile
        try:
            upload_id = uuid.UUID(entry.name.removesuffix(".part"))
        except ValueError:
            upload_id = None
        with transaction.atomic():
            upload = Upload.objects.select_for_update().filter(pk=upload_id).first() if upload_id else None
            if entry.exists() and _last_write(entry) >= cutoff:
                continue  # a chunk arrived while we looked
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            if upload is not None and upload.status == Upload.Status.RECEIVING:
                _mark_failed(upload, reason)
        removed.append(entry.name)
    stale = Upload.objects.filter(status=Upload.Status.RECEIVING,
                                  updated_at__lt=timezone.now() - timedelta(hours=hours))
    for upload in stale:  # their files went some other way
        if not part_path(upload).exists() and not (uploads_dir() / str(upload.id)).exists():
            _mark_failed(upload, reason)
    return removed


def model_delete(model: LocalModel, actor=None) -> None:
    """Remove a model from the library; its files go too when they live in our models folder, and so does the GGUF
    twin a worker converted it into for llama.cpp. A pulled split GGUF goes with the folder of its parts. Recorded
    in the audit trail (`actor`: who deleted it)."""
    from inference.audit import audit_record
    from inference.selection import converted_path

    path = Path((model.provenance or {}).get("folder") or model.path)
    library = Path(settings.MODELS_DIR).resolve()
    converted_path(model).unlink(missing_ok=True)
    name, format, size_bytes = model.name, model.format, model.size_bytes
    model.delete()
    audit_record(actor, "model.delete", name, format=format, size_bytes=size_bytes)
    if path.resolve().is_relative_to(library) and path.resolve() != library:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
