"""A small stand-in for the Hugging Face Hub, on 127.0.0.1, for the real `huggingface_hub` client (HF_ENDPOINT
points at it). It serves the routes the client of this project calls (read in huggingface_hub 2.x):

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}` (`HfApi.model_info`; with `?blobs=true` each
  sibling carries its size, git blob id and, for LFS files, `lfs.sha256`), `sha` being the commit;
- `HEAD /{repo}/resolve/{rev}/{path}` (`get_hf_file_metadata`: ETag, X-Linked-Etag / X-Linked-Size for LFS files,
  X-Repo-Commit, Content-Length) and `GET` of the same URL (`http_get`, with `Range: bytes=N-` when it resumes:
  206 and Content-Range);
- errors as the hub sends them: 401 `X-Error-Code: RepoNotFound` (a missing or private repo), 401/403
  `X-Error-Code: GatedRepo` (a gated repo without a token, or with one that was not granted), 404
  `RevisionNotFound` / `EntryNotFound`.

Faults a test can set up: a connection dropped mid-file (`drop_once`), a file held mid-way until the test lets it go
(`hold`), an outage (every request a 503), a listing and ETag that lie about a file's sha256 (`lie_about`). Every
request is recorded (`requests`), so a test can say what was fetched, from which byte, with which token.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    """One model repo: commits (sha -> {path: bytes}) and refs (name -> sha); `main` is where `publish` goes."""

    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    token: str = ""  # the token that may read it when gated or private

    def publish(self, files: dict[str, bytes], ref: str = "main") -> str:
        commit = secrets.token_hex(20)
        self.commits[commit] = dict(files)
        self.refs[ref] = commit
        return commit

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass
class Seen:
    method: str
    path: str
    range: str
    authorization: str


class HubStandin:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[Seen] = []
        self.outage = False
        self.lies: set[str] = set()  # paths whose advertised sha256 is not that of their bytes
        self._drops: dict[str, tuple[int, bool]] = {}  # path -> (bytes sent before the connection drops, outage)
        self._holds: dict[str, tuple[int, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for _, event in list(self._holds.values()):
            event.set()
        self._server.shutdown()
        self._server.server_close()

    # --- what the hub holds ------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, gated: bool = False, private: bool = False,
                 token: str = "") -> HubRepo:
        repo = HubRepo(repo_id, gated=gated, private=private, token=token)
        repo.publish(files)
        self.repos[repo_id] = repo
        return repo

    # --- faults ------------------------------------------------------------------------------------------

    def drop_once(self, path: str, after: int, *, then_outage: bool = False) -> None:
        """The next GET of `path` sends `after` bytes, then the connection drops (Content-Length said more); with
        `then_outage`, every request after that is a 503 until the test sets `outage` back to False."""
        self._drops[path] = (after, then_outage)

    def hold(self, path: str, after: int) -> threading.Event:
        """GETs of `path` send `after` bytes, then wait until the returned event is set."""
        event = threading.Event()
        self._holds[path] = (after, event)
        return event

    def release(self, path: str) -> None:
        """Let a held file go (the GETs waiting on it go on) and hold it no more."""
        held = self._holds.pop(path, None)
        if held is not None:
            held[1].set()

    def lie_about(self, path: str) -> None:
        self.lies.add(path)

    def fetched(self, method: str = "GET") -> list[Seen]:
        return [seen for seen in self.requests if seen.method == method and "/resolve/" in seen.path]

    # --- the routes --------------------------------------------------------------------------------------

    def sibling(self, path: str, data: bytes) -> dict:
        entry = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"size": len(data), "sha256": self.sha256(path, data), "pointerSize": 134}
        return entry

    def sha256(self, path: str, data: bytes) -> str:
        """What the hub says the file's sha256 is (a lie for the paths in `lies`)."""
        digest = hashlib.sha256(data).hexdigest()
        return hashlib.sha256(data + b"lie").hexdigest() if path in self.lies else digest


def _error(handler: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("X-Error-Code", code)
    handler.send_header("X-Error-Message", message)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _handler(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

        def _route(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            with hub._lock:
                hub.requests.append(Seen(self.command, path, self.headers.get("Range", ""),
                                         self.headers.get("Authorization", "")))
            if hub.outage:
                _error(self, 503, "ServiceUnavailable", "The hub is down for maintenance.")
                return
            if match := _API.match(path):
                self._model_info(match["repo"], match["rev"] or "main", parse_qs(parts.query))
            elif match := _RESOLVE.match(path):
                self._resolve(match["repo"], match["rev"], match["path"])
            else:
                _error(self, 404, "NotFound", f"{path} is not a route of this hub")

        def _repo(self, repo_id: str) -> HubRepo | None:
            """The repo when this request may read it; else the hub's error is sent and None returned."""
            repo = hub.repos.get(repo_id)
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if repo is None or (repo.private and token != repo.token):
                _error(self, 401, "RepoNotFound", "Repository not found")
                return None
            if repo.gated and token != repo.token:
                message = (f"Access to model {repo_id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.")
                _error(self, 403 if token else 401, "GatedRepo", message)
                return None
            return repo

        def _model_info(self, repo_id: str, revision: str, query: dict) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = repo.resolve(revision)
            if commit is None:
                _error(self, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            files = repo.commits[commit]
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = [hub.sibling(name, data) if blobs else {"rfilename": name} for name, data in files.items()]
            body = json.dumps({"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": commit,
                               "private": repo.private, "gated": "manual" if repo.gated else False,
                               "disabled": False, "tags": [], "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = repo.resolve(revision)
            if commit is None:
                _error(self, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            data = repo.commits[commit].get(path)
            if data is None:
                _error(self, 404, "EntryNotFound", f"{path} does not exist on {revision}")
                return
            start = 0
            if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(match[1])
                if start >= len(data) and data:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            lfs = path.endswith(LFS_SUFFIXES)
            etag = hub.sha256(path, data) if lfs else git_blob_sha1(data)
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", commit)
            if lfs:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            self._send_body(path, data, start)

        def _send_body(self, path: str, data: bytes, start: int) -> None:
            body = data[start:]
            drop = hub._drops.pop(path, None)
            if drop is not None:
                self.wfile.write(body[:drop[0]])
                self.wfile.flush()
                hub.outage = hub.outage or drop[1]
                self.close_connection = True
                self.connection.shutdown(2)
                return
            held = hub._holds.get(path)
            if held is not None and start < held[0]:
                after, event = held
                self.wfile.write(body[:after - start])
                self.wfile.flush()
                event.wait(60)
                if hub._stopping.is_set():
                    return
                body = body[after - start:]
            try:
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    return Handler


# --- the tiny repos the pull tests use --------------------------------------------------------------------


def split_gguf(source: Path, folder: Path, stem: str, max_tensors: int = 8) -> list[Path]:
    """`source` rewritten as a split GGUF set, "<stem>-00001-of-0000N.gguf" ... (gguf-py's writer, as gguf-split
    writes them): the same metadata and tensors, at most `max_tensors` per part."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    folder.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(folder / f"{stem}.gguf", reader.fields["general.architecture"].contents(),
                             split_max_tensors=max_tensors)
    for entry in reader.fields.values():
        if entry.name.startswith("GGUF.") or entry.name == "general.architecture":
            continue
        kind = entry.types[0]
        writer.add_key_value(entry.name, entry.contents(), kind,
                             sub_type=entry.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(folder.glob(f"{stem}-*-of-*.gguf"))


@dataclass
class TinyRepos:
    """What `add_tiny_repos` put on the hub, by repo id, with the bytes of the files the tests look at."""

    gguf: str = "acme/Tiny-GGUF"  # Q2_K, Q4_K_M (4 MB: several download chunks), Q8_0, an mmproj file, a README
    no_q4_k_m: str = "acme/NoQ4-GGUF"  # Q2_K, Q3_K_M, Q5_K_M, Q8_0 (the Q8_0 largest)
    split: str = "acme/Split-GGUF"  # one model in three parts
    hf: str = "acme/tiny-hf"  # a safetensors folder, plus what a pull leaves out (README, .bin, original/*.pth)
    pickles: str = "acme/pickles-only"
    gated: str = "acme/Gated-GGUF"  # token "hf_granted"
    files: dict[str, bytes] = field(default_factory=dict)


def add_tiny_repos(hub: HubStandin, workdir: Path) -> TinyRepos:
    from tests.factories import CHATML, build_tiny_gguf, build_tiny_hf_dir, write_pickle_checkpoint

    repos = TinyRepos()

    def gguf_bytes(name: str, file_type: int, **dims) -> bytes:
        return build_tiny_gguf(workdir / name, file_type=file_type, chat_template=CHATML, **dims).read_bytes()

    q4 = gguf_bytes("big-q4.gguf", 15, n_embd=256, n_ff=256)  # 4 MB
    small = {kind: gguf_bytes(f"small-{kind}.gguf", file_type) for kind, file_type in
             (("Q2_K", 10), ("Q3_K_M", 12), ("Q5_K_M", 17), ("Q8_0", 7))}
    q8_large = gguf_bytes("large-q8.gguf", 7, n_embd=128, n_ff=256)
    repos.files.update({"Q4_K_M": q4, **small})
    hub.add_repo(repos.gguf, {".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n",
                              "README.md": b"# Tiny\nA tiny llama for tests.\n",
                              "tiny-Q2_K.gguf": small["Q2_K"], "tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": small["Q8_0"],
                              "mmproj-tiny-F16.gguf": b"GGUF not a model"})
    hub.add_repo(repos.no_q4_k_m, {"tiny-Q2_K.gguf": small["Q2_K"], "tiny-Q3_K_M.gguf": small["Q3_K_M"],
                                   "tiny-Q5_K_M.gguf": small["Q5_K_M"], "tiny-Q8_0.gguf": q8_large})
    split_source = build_tiny_gguf(workdir / "split-src.gguf", file_type=15, chat_template=CHATML)
    parts = split_gguf(split_source, workdir / "split", "tiny-Q4_K_M")
    hub.add_repo(repos.split, {"README.md": b"# split\n", **{p.name: p.read_bytes() for p in parts}})
    hf_dir = build_tiny_hf_dir(workdir / "hf")
    hf_files = {p.name: p.read_bytes() for p in sorted(hf_dir.iterdir()) if p.is_file()}
    pickle = write_pickle_checkpoint(workdir / "pytorch_model.bin").read_bytes()
    hub.add_repo(repos.hf, {**hf_files, "README.md": b"# tiny hf\n", ".gitattributes": b"*.bin filter=lfs\n",
                            "pytorch_model.bin": pickle, "original/consolidated.00.pth": pickle})
    repos.files.update({f"hf/{name}": data for name, data in hf_files.items()})
    hub.add_repo(repos.pickles, {"config.json": hf_files["config.json"], "tokenizer.json": hf_files["tokenizer.json"],
                                 "pytorch_model.bin": pickle})
    hub.add_repo(repos.gated, {"tiny-Q4_K_M.gguf": small["Q5_K_M"]}, gated=True, token="hf_granted")
    return repos
