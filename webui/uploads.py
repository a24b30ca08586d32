"""Admins upload models in chunks: a GGUF file, or a Hugging Face directory as a zip. The bytes are checked
before anything is imported: a GGUF must start with its magic; a zip may hold no absolute path, no `..`, no
link, nothing beyond the size limit, and no entry compressed beyond a sane ratio (a zip bomb). The result goes
through `inference.services.model_import`, which validates the model itself."""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import transaction

from inference.engine.base import EngineError
from inference.models import LocalModel
from inference.services import default_model_name, model_import
from webui.models import Upload

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024**3
MAX_CHUNK_BYTES = 8 * 1024**2
MAX_COMPRESSION_RATIO = 200  # deflate reaches ~10 on weights, ~1000 on a bomb
ALLOWED_SUFFIXES = (".gguf", ".zip")


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


def upload_start(*, owner, filename: str, size: int, name: str = "") -> Upload:
    filename = PurePosixPath(str(filename).replace("\\", "/")).name[:255]
    if not filename.lower().endswith(ALLOWED_SUFFIXES):
        raise UploadRefused("Upload a .gguf file, or a Hugging Face model directory as a .zip.")
    if size <= 0:
        raise UploadRefused("That file is empty.")
    limit = max_upload_bytes()
    if size > limit:
        raise UploadRefused(f"That file is {size:,} bytes; this server accepts at most {limit:,}.",
                            code="too_large", status=413)
    name = (name or default_model_name(Path(filename))).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", name):
        raise UploadRefused("A model name may use letters, digits, '.', '_', ':' and '-'.")
    if LocalModel.objects.filter(name=name).exists():
        raise UploadRefused(f"The library already has a model named {name!r}; pick another name.", code="exists",
                            status=409)
    upload = Upload.objects.create(owner=owner, filename=filename, name=name, size=size)
    part_path(upload).touch()
    return upload


def upload_chunk(upload: Upload, offset: int, data: bytes) -> Upload:
    """Append one chunk. The offset must be where the file ends now, so a retried chunk is never written twice."""
    if upload.status != Upload.Status.RECEIVING:
        raise UploadRefused("This upload is finished.", code="finished", status=409)
    with transaction.atomic():
        upload = Upload.objects.select_for_update().get(pk=upload.pk)
        if offset != upload.received:
            raise UploadRefused(f"Expected the chunk at byte {upload.received}.", code="wrong_offset", status=409)
        if upload.received + len(data) > upload.size:
            raise UploadRefused("That is more data than the file's announced size.")
        with part_path(upload).open("r+b") as part:
            part.seek(offset)
            part.write(data)
            part.truncate()
        upload.received += len(data)
        upload.save(update_fields=["received", "updated_at"])
    return upload


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
            with archive.open(info) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
    entries = [p for p in destination.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    if len(entries) == 1 and entries[0].is_dir():  # a zip of a folder: the model is that folder's content
        inner = destination.with_name(destination.name + ".unpacking")
        entries[0].rename(inner)
        shutil.rmtree(destination)
        inner.rename(destination)
    return destination


def upload_finish(upload: Upload) -> LocalModel:
    """Validate the received file and import it; a refused file is deleted and the reason kept on the upload."""
    if upload.status == Upload.Status.IMPORTED and upload.model_id:
        return upload.model
    if upload.received != upload.size:
        raise UploadRefused(f"Only {upload.received:,} of {upload.size:,} bytes have arrived.", code="incomplete",
                            status=409)
    part = part_path(upload)
    library = Path(settings.MODELS_DIR)
    destination = library / (upload.name + (".gguf" if upload.filename.lower().endswith(".gguf") else ""))
    try:
        if destination.exists():
            raise UploadRefused(f"{destination.name} already exists in the models folder; pick another name.")
        if upload.filename.lower().endswith(".gguf"):
            with part.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise UploadRefused("That file is not a GGUF model (it does not start with 'GGUF').")
            part.rename(destination)
            model_path = destination
        else:
            check_zip(part, max_upload_bytes())
            model_path = extract_zip(part, destination)
            part.unlink()
        try:
            model = model_import(model_path, name=upload.name)
        except EngineError:
            if destination.is_dir():
                shutil.rmtree(destination, ignore_errors=True)
            else:
                destination.unlink(missing_ok=True)
            raise
    except EngineError as error:
        part.unlink(missing_ok=True)
        if destination.is_dir() and not LocalModel.objects.filter(name=upload.name).exists():
            shutil.rmtree(destination, ignore_errors=True)
        upload.status, upload.error_text = Upload.Status.FAILED, error.message
        upload.save(update_fields=["status", "error_text", "updated_at"])
        raise
    upload.status, upload.model = Upload.Status.IMPORTED, model
    upload.save(update_fields=["status", "model", "updated_at"])
    return model


def upload_cancel(upload: Upload) -> None:
    part_path(upload).unlink(missing_ok=True)
    upload.delete()


def model_delete(model: LocalModel) -> None:
    """Remove a model from the library; its files go too when they live in our models folder."""
    path = Path(model.path)
    library = Path(settings.MODELS_DIR).resolve()
    model.delete()
    if path.resolve().is_relative_to(library) and path.resolve() != library:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
