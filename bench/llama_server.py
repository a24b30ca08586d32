"""llama.cpp's own `llama-server`, for benchmarks that put Hearth beside it.

It is built once from the llama.cpp that llama-cpp-python vendors (the installed version's sdist), so both run the
same kernels with the same build flags, into `$HEARTH_BENCH_CACHE/llama-server-<version>/` (default
~/.cache/hearth-bench). `llama_server_binary()` gives that binary, building it the first time (several minutes on
2 cores) or when the build options changed (`cmake_options()`: the Makefile's flags for llama-cpp-python and
$CMAKE_ARGS), or None with a one-line reason printed. `running_llama_server(...)` starts it on a free port, waits for
`/health`, and stops it on exit. `HEARTH_LLAMA_SERVER=/path/to/llama-server` uses that binary instead (a build of
one's own, e.g. with CUDA on a machine without internet; its options are read from a `cmake-options.txt` beside it
if there is one).

Build by hand: `python -m bench.llama_server` (prints the binary's path).
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PACKAGE = "llama-cpp-python"
CMAKE_OPTIONS = [
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no download of the web UI: the server runs without one
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary that can be copied out of the build tree
    "-DCMAKE_BUILD_TYPE=Release",
]
BUILD_JOBS = os.cpu_count() or 2
OPTIONS_FILE = "cmake-options.txt"  # beside the binary: the options it was built with


def cmake_options() -> list[str]:
    """The build's options: the fixed ones, then the compiler flags the Makefile gives llama-cpp-python (for this
    CPU but without ggml's AMX kernels, which die with SIGILL where the hypervisor does not enable AMX), then
    $CMAKE_ARGS as llama-cpp-python's own build reads it. Keep these in step with the Makefile."""
    options = list(CMAKE_OPTIONS)
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        options += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return options + shlex.split(os.environ.get("CMAKE_ARGS", ""))


def cache_root() -> Path:
    """The same folder as bench/hf_export.py's (not imported from there: that module imports torch)."""
    return Path(os.environ.get("HEARTH_BENCH_CACHE") or Path.home() / ".cache" / "hearth-bench")


def llama_server_binary(version: str | None = None) -> Path | None:
    """The cached llama-server for the installed llama-cpp-python (or `version`), built on first use; None, with
    a one-line message on stdout saying why, when it cannot be had. `HEARTH_LLAMA_SERVER` names a binary to use
    as it is."""
    if given := os.environ.get("HEARTH_LLAMA_SERVER"):
        if Path(given).is_file() and os.access(given, os.X_OK):
            return Path(given)
        print(f"llama-server: HEARTH_LLAMA_SERVER={given} is not an executable file", flush=True)
        return None
    try:
        version = version or metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        print(f"llama-server: {PACKAGE} is not installed, so there is no llama.cpp version to build", flush=True)
        return None
    target = cache_root() / f"llama-server-{version}"
    binary = target / "llama-server"
    options = cmake_options()
    built_with = target / OPTIONS_FILE
    if binary.is_file() and os.access(binary, os.X_OK) and built_with.is_file() \
            and built_with.read_text().splitlines() == options:
        return binary
    try:
        build(version, target, options)
    except BuildFailed as failure:
        print(f"llama-server: {failure}", flush=True)
        return None
    return binary


class BuildFailed(Exception):
    pass


def build(version: str, target: Path, options: list[str]) -> None:
    """Download llama-cpp-python's sdist, build `llama-server` from its vendor/llama.cpp, copy the binary to
    `target`. The build log stays beside the target (`llama-server-<version>.build.log`) for a failure to read."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildFailed(f"cannot build it: no `{tool}` on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent / f"llama-server-{version}.build.log"
    print(f"llama-server: building it from {PACKAGE} {version}'s llama.cpp (several minutes; log: {log_path})",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-", dir=target.parent) as work, \
            log_path.open("w") as log:
        work = Path(work)

        def step(what: str, command: list[str], cwd: Path = work) -> None:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            try:
                done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            except OSError as error:
                raise BuildFailed(f"{what} failed: {error}") from None
            if done.returncode != 0:
                raise BuildFailed(f"{what} failed (exit {done.returncode}); see {log_path}")

        step("downloading the sdist", [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                                       f"{PACKAGE}=={version}", "-d", str(work / "sdist")])
        archives = sorted((work / "sdist").glob("*.tar.gz"))
        if not archives:
            raise BuildFailed(f"pip download gave no .tar.gz sdist of {PACKAGE}=={version}")
        with tarfile.open(archives[0]) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(work / "src", filter="data")
            else:  # Python < 3.11.4; the archive comes from the package index pip was pointed at
                archive.extractall(work / "src")
        sources = sorted((work / "src").glob("*/vendor/llama.cpp"))
        if not sources:
            raise BuildFailed(f"{archives[0].name} has no vendor/llama.cpp")
        build_dir = work / "build"
        step("cmake configure", ["cmake", "-S", str(sources[0]), "-B", str(build_dir), *options])
        step("cmake build", ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(BUILD_JOBS)])
        built = build_dir / "bin" / "llama-server"
        if not built.is_file():
            raise BuildFailed(f"the build finished but {built} is missing; see {log_path}")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copy2(built, staging / "llama-server")
        (staging / OPTIONS_FILE).write_text("\n".join(options) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # whole or absent: an interrupted build leaves no binary that looks finished
    print(f"llama-server: built {target / 'llama-server'}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        """The log's tail, after the exit status if it has died (a crash leaves no line in the log)."""
        out = [] if self.process.poll() is None else [f"llama-server exited with {self.process.returncode}"]
        if self.log.exists():
            out += self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


@contextmanager
def running_llama_server(binary: Path, model: Path, *, n_ctx: int, parallel: int, threads: int = 2,
                         log_dir: Path, extra_args: list[str] = (), timeout: float = 180) -> Iterator[LlamaServer]:
    """`llama-server -m MODEL -t THREADS -c N_CTX -np PARALLEL` on a free port of 127.0.0.1, with its defaults
    otherwise (prompt cache on). `n_ctx` is its whole KV cache, divided among the `parallel` slots. Waits for
    `/health` to answer 200 (the model loaded), then yields; stopped (SIGTERM, then SIGKILL) on exit."""
    import httpx  # here, so that building needs nothing beyond the standard library

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"llama-server-{port}.log"
    command = [str(binary), "-m", str(model), "-t", str(threads), "-c", str(n_ctx), "-np", str(parallel),
               "--host", "127.0.0.1", "--port", str(port), *extra_args]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = LlamaServer(process, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server was not healthy after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    found = llama_server_binary(sys.argv[1] if len(sys.argv) > 1 else None)
    print(found or "no llama-server")
    sys.exit(0 if found else 1)
