"""The Hugging Face Hub, through `huggingface_hub`: what a repo holds, which of its files a pull fetches, and the
download of one file into a `.part` file that resumes where it stopped. No Django here (inference/pulls.py runs the
jobs).

The client honours HF_ENDPOINT (read at each call, so a mirror or the tests' stand-in hub can be named at any time),
HF_TOKEN (gated and private repos) and HF_HUB_OFFLINE (no pull at all). Routes used: `HfApi.model_info(...,
files_metadata=True)` (GET /api/models/{repo}/revision/{rev}?blobs=true: the commit, every file's size, git blob id
and LFS sha256), `get_hf_file_metadata` (HEAD /{repo}/resolve/{commit}/{file}: ETag, size, where to download) and
`file_download.http_get` (GET with `Range: bytes=N-` to resume; it retries a dropped connection itself).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from inference.engine.base import EngineError
from inference.engine.formats import PICKLE_SUFFIXES, SAFETENSORS_INDEX, TOKENIZER_FILES

DEFAULT_QUANT = "Q4_K_M"
CHUNK_BYTES = 1024 * 1024  # what a download writes at a time: progress, a cancel and a resume see every MiB
# The files of a Hugging Face folder that Hearth's import reads (besides the *.safetensors weights).
HF_FOLDER_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES, "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "chat_template.json", SAFETENSORS_INDEX)
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
SAFE_PATH_PART = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}")
SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
QUANT = re.compile(r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[0-9A-Z]+)*|TQ\d_\d|MXFP4(?:_MOE)?|BF16|FP16|F16|FP32|F32))"
                   r"(?![A-Za-z0-9])", re.IGNORECASE)
HUB_NAME_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "https://hf.co/", "http://hf.co/",
                     "huggingface.co/", "hf.co/")


class HubError(EngineError):
    """A pull that cannot go on; `code` says why (gated, not_found, revision_not_found, file_not_found, no_weights,
    network, checksum, offline, disk_space) and the message what to do."""

    code = "hub_error"
    status = 400


@cache
def configure() -> None:
    """Hearth's settings of the client, once per process: no telemetry (the user agent names no packages, and
    huggingface_hub does not fetch its registry of agent harnesses from the hub), no progress bars in the logs, and
    1 MiB chunks (huggingface_hub reads 10 MiB before writing any)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    constants.HF_HUB_DISABLE_TELEMETRY = True
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES
    disable_progress_bars()


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or constants.ENDPOINT


def offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.strip().upper() in ("1", "ON", "YES", "TRUE")


def check_online() -> None:
    if offline():
        raise HubError("HF_HUB_OFFLINE is set, so this server may not reach the Hugging Face Hub: unset it to pull, "
                       "or copy the model's files here and add them with `python manage.py import_model PATH`.",
                       code="offline")


def repo_url(repo: str) -> str:
    return f"{endpoint()}/{repo}"


# ---------------------------------------------------------------------------------------------------------
# Names


def check_repo_id(repo: str) -> str:
    repo = (repo or "").strip()
    if not REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo:
        raise HubError(f"{repo!r} is not a Hugging Face repo name: write it as on the hub, owner/name (for example "
                       "Qwen/Qwen3-0.6B-GGUF).", code="invalid_repo")
    return repo


def check_revision(revision: str) -> str:
    revision = (revision or "main").strip()
    if not REVISION.fullmatch(revision) or ".." in revision:
        raise HubError(f"{revision!r} is not a revision: give a branch, a tag or a commit hash (main by default).",
                       code="invalid_revision")
    return revision


def parse_reference(text: str) -> tuple[str, str]:
    """A model name as Ollama and people write it -> (repo, tag): "hf.co/Qwen/Qwen3-0.6B-GGUF:Q4_K_M",
    "huggingface.co/owner/name", "https://huggingface.co/owner/name", "owner/name", "owner/name:Q8_0". The tag is
    a quantization (or a GGUF file name); "" and "latest" mean the default choice."""
    name = (text or "").strip()
    for prefix in HUB_NAME_PREFIXES:
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
            break
    repo, _, tag = name.partition(":")
    tag = "" if tag.lower() == "latest" else tag
    return check_repo_id(repo.rstrip("/")), tag


# ---------------------------------------------------------------------------------------------------------
# What a repo holds


@dataclass(frozen=True)
class RepoFile:
    name: str  # the path in the repo
    size: int
    sha256: str = ""  # LFS files: what the hub says the bytes hash to
    blob_id: str = ""  # the git blob id (sha1 of "blob <size>\0" + bytes): what a small file is checked against

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "blob_id": self.blob_id}

    @classmethod
    def from_dict(cls, data: dict) -> RepoFile:
        return cls(str(data["name"]), int(data["size"]), str(data.get("sha256") or ""), str(data.get("blob_id") or ""))


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: str  # as asked: a branch, tag or commit
    commit: str  # what it resolved to
    files: tuple[RepoFile, ...]


def _api():
    from huggingface_hub import HfApi

    configure()
    return HfApi(endpoint=endpoint())


def listing(repo: str, revision: str = "main") -> Listing:
    """Every file of `repo` at `revision` with its size and checksums, and the commit it resolved to."""
    check_online()
    repo, revision = check_repo_id(repo), check_revision(revision)
    with hub_errors(repo, revision):
        info = _api().model_info(repo, revision=revision, files_metadata=True)
    files = tuple(RepoFile(s.rfilename, int(s.size or (s.lfs.size if s.lfs else 0) or 0),
                           (s.lfs.sha256 if s.lfs else "") or "", s.blob_id or "") for s in info.siblings or [])
    return Listing(repo=repo, revision=revision, commit=info.sha or "", files=files)


def latest_commit(repo: str, revision: str = "main") -> str:
    check_online()
    with hub_errors(repo, revision):
        return _api().model_info(repo, revision=revision).sha or ""


class hub_errors:
    """Turns what huggingface_hub raises into a HubError that says what to do."""

    def __init__(self, repo: str, revision: str = "main", file: str = ""):
        self.repo, self.revision, self.file = repo, revision, file

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback) -> bool:
        if error is None or isinstance(error, HubError):
            return False
        translated = translate(error, self.repo, self.revision, self.file)
        if translated is None:
            return False
        raise translated from error


def translate(error: BaseException, repo: str, revision: str = "main", file: str = "") -> HubError | None:
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token_set = bool(_token())
    if isinstance(error, OfflineModeIsEnabled):
        try:
            check_online()
        except HubError as offline_error:
            return offline_error
        return HubError(str(error), code="offline")
    if isinstance(error, GatedRepoError):
        if token_set:
            return HubError(f"{repo} is gated and the account of this server's HF_TOKEN has not been granted access: "
                            f"accept its conditions on {repo_url(repo)} with that account (some repos wait for the "
                            "owner's approval), then pull again.", code="gated", status=403)
        return HubError(f"{repo} is gated: accept its conditions on {repo_url(repo)} with your Hugging Face account, "
                        "create a read token (Settings → Access Tokens), set HF_TOKEN=<token> in the environment of "
                        "the server and its puller, and pull again.", code="gated", status=403)
    if isinstance(error, RepositoryNotFoundError):
        hint = ("HF_TOKEN is set, but its account cannot read it" if token_set
                else "if it is private, set HF_TOKEN to a token that can read it")
        return HubError(f"There is no repo {repo} on {endpoint()} ({hint}). Check the name: owner/name as in the "
                        "repo's address.", code="not_found", status=404)
    if isinstance(error, RevisionNotFoundError):
        return HubError(f"{repo} has no revision {revision!r}: give a branch, a tag or a commit hash (main by "
                        "default).", code="revision_not_found", status=404)
    if isinstance(error, RemoteEntryNotFoundError):
        return HubError(f"{repo} has no file {file} at {revision}; it may have been removed since the listing. "
                        "Pull again.", code="file_not_found", status=404)
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", 0) or 0
        if status in (401, 403):
            return HubError(f"The hub refused access to {repo} ({status}): set HF_TOKEN to a token that can read it.",
                            code="gated", status=403)
        return HubError(f"The hub answered {status or 'an error'} for {repo}: {_first_line(error)}. It may be busy "
                        "or down; pull again later (the bytes already fetched are kept).", code="network", status=502)
    if isinstance(error, httpx2.TransportError | ConnectionError | TimeoutError) or (
            isinstance(error, OSError) and "Consistency check failed" in str(error)):
        return HubError(f"Could not reach {endpoint()} for {repo}: {_first_line(error) or type(error).__name__}. "
                        "Check this server's network (and HF_ENDPOINT, or a proxy), then pull again: the bytes "
                        "already fetched are kept and the pull resumes where it stopped.", code="network", status=502)
    return None


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), "")[:300]


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


# ---------------------------------------------------------------------------------------------------------
# Which files


@dataclass(frozen=True)
class GGUFChoice:
    """One GGUF model of a repo: a single file, or the parts of a split set (first part first)."""

    parts: tuple[RepoFile, ...]
    quant: str  # from the file name ("Q4_K_M", "UD-Q4_K_XL", "F16"), "" when it names none

    @property
    def name(self) -> str:
        return self.parts[0].name

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def bits(self) -> float | None:
        return quant_bits(self.quant)

    def to_dict(self) -> dict:
        return {"name": self.name, "quant": self.quant, "size": self.size, "parts": len(self.parts)}


def quant_of(file_name: str) -> str:
    stem = PurePosixPath(file_name).name
    split = SPLIT.match(stem)
    stem = split["stem"] if split else stem.removesuffix(".gguf").removesuffix(".GGUF")
    found = QUANT.findall(stem)
    return found[-1].upper() if found else ""


def quant_bits(quant: str) -> float | None:
    label = quant.upper().removeprefix("UD-")
    if label in ("F16", "FP16", "BF16"):
        return 16
    if label in ("F32", "FP32"):
        return 32
    if label.startswith("MXFP4"):
        return 4
    match = re.match(r"(?:I?Q|TQ)(\d)", label)
    return float(match[1]) if match else None


def _safe_path(name: str) -> bool:
    parts = name.split("/")
    return all(SAFE_PATH_PART.fullmatch(part) for part in parts) and len(parts) <= 4


def gguf_choices(files: Iterable[RepoFile]) -> list[GGUFChoice]:
    """The GGUF models among `files`, smallest first: single files, and split sets ("-00001-of-00003.gguf") whose
    parts are all there. Projectors for images (mmproj-*) and files with odd paths are left out."""
    singles, sets = [], {}
    for file in files:
        base = PurePosixPath(file.name).name
        if not base.lower().endswith(".gguf") or base.lower().startswith("mmproj") or not _safe_path(file.name):
            continue
        split = SPLIT.match(file.name)
        if split:
            sets.setdefault((split["stem"], int(split["count"])), {})[int(split["index"])] = file
        else:
            singles.append(GGUFChoice((file,), quant_of(file.name)))
    for (_stem, count), parts in sets.items():
        if sorted(parts) == list(range(1, count + 1)):
            singles.append(GGUFChoice(tuple(parts[i] for i in range(1, count + 1)), quant_of(parts[1].name)))
    return sorted(singles, key=lambda choice: (choice.size, choice.name))


def default_gguf(choices: list[GGUFChoice]) -> GGUFChoice:
    """Q4_K_M when the repo has it, else the smallest of at least 4 bits, else the smallest."""
    q4_k_m = [c for c in choices if c.quant == DEFAULT_QUANT]
    if q4_k_m:
        return q4_k_m[0]
    return next((c for c in choices if (c.bits or 0) >= 4), choices[0])


def pick_gguf(choices: list[GGUFChoice], *, file: str = "", quant: str = "", repo: str = "") -> GGUFChoice:
    available = ", ".join(f"{c.name} ({c.quant or '?'})" for c in choices[:12])
    if file:
        for choice in choices:
            if file in (choice.name, PurePosixPath(choice.name).name) or file in (p.name for p in choice.parts):
                return choice
        raise HubError(f"{repo} has no GGUF file {file!r}. It has: {available}.", code="file_not_found", status=404)
    if quant:
        wanted = quant.upper()
        for label in (lambda c: c.quant, lambda c: c.quant.removeprefix("UD-")):
            found = [c for c in choices if label(c) == wanted]
            if found:
                return found[0]
        quants = ", ".join(dict.fromkeys(c.quant for c in choices if c.quant)) or "none named"
        raise HubError(f"{repo} has no {quant} GGUF file. Its quantizations: {quants}.", code="file_not_found",
                       status=404)
    return default_gguf(choices)


@dataclass(frozen=True)
class Plan:
    """What a pull fetches: the files (the first is what the library imports for GGUF), their format and quant."""

    format: str  # "gguf" | "hf-safetensors"
    files: tuple[RepoFile, ...]
    quant: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def plan(found: Listing, *, file: str = "", quant: str = "") -> Plan:
    """The files to fetch. A GGUF repo (or --file / --quant): one GGUF model, all of its parts. Else a Hugging Face
    safetensors folder: exactly the files an import needs, never pickled weights."""
    repo = found.repo
    choices = gguf_choices(found.files)
    if file and not file.lower().endswith(".gguf"):
        raise HubError(f"--file picks a GGUF file of the repo ({file!r} is not one); leave it out to pull a "
                       "safetensors repo's folder.", code="file_not_found")
    if file or quant or choices:
        if not choices:
            raise HubError(f"{repo} has no GGUF files, so --file and --quant do not apply; leave them out to pull "
                           "its safetensors folder.", code="file_not_found", status=404)
        chosen = pick_gguf(choices, file=file, quant=quant, repo=repo)
        return Plan("gguf", chosen.parts, chosen.quant)
    top = {f.name: f for f in found.files if "/" not in f.name}
    weights = [f for name, f in top.items() if name.endswith(".safetensors")]
    if len(weights) > 1:  # Mistral's consolidated.safetensors duplicates the transformers shards
        weights = [f for f in weights if not f.name.startswith("consolidated")] or weights
    if not weights:
        pickled = sorted(f.name for f in found.files if f.name.lower().endswith(PICKLE_SUFFIXES))
        if pickled:
            raise HubError(f"{repo} has only pickled PyTorch weights ({', '.join(pickled[:3])}), which Hearth never "
                           "loads (unpickling runs code). Look for a safetensors or GGUF version of the model (often "
                           "a repo named …-GGUF, or a safetensors branch), or convert it on a trusted machine.",
                           code="no_weights")
        raise HubError(f"{repo} has neither GGUF files nor safetensors weights at {found.revision}, so there is "
                       "nothing Hearth can load. Check the repo and revision.", code="no_weights", status=404)
    missing = [label for label, present in (("config.json", "config.json" in top),
                                            (" or ".join(TOKENIZER_FILES), any(t in top for t in TOKENIZER_FILES)))
               if not present]
    if missing:
        raise HubError(f"{repo} has safetensors weights but no {', '.join(missing)}, so it is not a Hugging Face "
                       "model folder Hearth can import.", code="no_weights")
    wanted = [top[name] for name in HF_FOLDER_FILES if name in top]
    return Plan("hf-safetensors", tuple(wanted + sorted(weights, key=lambda f: f.name)))


# ---------------------------------------------------------------------------------------------------------
# Downloading and checking one file


class _Counting:
    """The file http_get writes to: counts the bytes, and lets the caller stop the download between chunks
    (`on_bytes` raises)."""

    def __init__(self, handle: BinaryIO, on_bytes: Callable[[int], None]):
        self.handle, self.on_bytes = handle, on_bytes

    def write(self, data: bytes) -> int:
        self.on_bytes(len(data))  # first: a download told to stop writes nothing more
        return self.handle.write(data)

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            self.on_bytes(-self.handle.tell())  # the server ignored the Range: start again from byte 0
        return self.handle.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        return self.handle.truncate(size)

    def flush(self) -> None:
        self.handle.flush()


def download(repo: str, commit: str, file: RepoFile, part: Path, on_bytes: Callable[[int], None]) -> str:
    """Fetch `file` at `commit` into `part`, after the bytes it already holds (Range), calling on_bytes(n) per
    chunk. Returns the ETag the hub gave. A dropped connection is resumed by http_get itself (a few times); what it
    gives up on, and the hub's errors, come out as HubError."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    check_online()
    configure()
    url = hf_hub_url(repo, file.name, revision=commit, endpoint=endpoint())
    with hub_errors(repo, commit, file.name):
        metadata = get_hf_file_metadata(url, endpoint=endpoint())
        expected = metadata.size if metadata.size is not None else file.size
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > expected:
            part.unlink()
            have = 0
        with part.open("ab") as handle:
            http_get(metadata.location, _Counting(handle, on_bytes), resume_size=have,
                     headers=build_hf_headers(), expected_size=expected, displayed_filename=file.name)
    return metadata.etag or ""


def file_digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm)
    digest.update(prefix)
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, file: RepoFile, etag: str = "") -> None:
    """The bytes against what the hub says: the LFS sha256 (or a sha256 ETag), else the git blob id (or a sha1
    ETag). HubError(checksum) when they differ."""
    size = path.stat().st_size
    if file.size and size != file.size:
        raise HubError(f"{file.name} has {size} bytes where the hub lists {file.size}.", code="checksum")
    etag = etag.lower()
    expected_sha256 = file.sha256 or (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else "")
    if expected_sha256:
        got = file_digest(path, "sha256")
        if got != expected_sha256:
            raise HubError(f"{file.name} does not match the hub's sha256 digest (expected {expected_sha256}, got "
                           f"{got}): the download was corrupted, or the file changed on the hub. It was deleted; pull "
                           "again.", code="checksum")
        return
    expected_blob = file.blob_id or (etag if re.fullmatch(r"[0-9a-f]{40}", etag) else "")
    if expected_blob:
        got = file_digest(path, "sha1", b"blob %d\0" % size)
        if got != expected_blob:
            raise HubError(f"{file.name} does not match the hub's git blob id (expected {expected_blob}, got {got}): "
                           "the download was corrupted. It was deleted; pull again.", code="checksum")
