"""Checks on a CUDA machine that Hearth's llama.cpp backend offloads to the GPU (n_gpu_layers=-1 vs 0).

It builds a medium random-weight llama GGUF (tests.factories.build_tiny_gguf, f32: about 1 GB with the
defaults), loads it through Hearth's own LlamaCppBackend twice, once with n_gpu_layers=0 and once with -1,
decodes the same greedy tokens from each, and prints llama.cpp's own load lines ("offloaded N/M layers to
GPU", the CUDA buffer sizes), the GPU memory the process holds, and decode tokens/s for both.

Needs only numpy, jinja2, gguf and a llama-cpp-python built with CUDA
(CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python). Run from the repository root:

    PYTHONPATH=. python3 docs/gpu-check.py --out /tmp/gpu-check.json

Exit status 0 when the -1 load offloaded every layer and decoded faster than the 0 load; 1 otherwise.
With --quick (a tiny model) it only checks that the script runs, e.g. on a CPU-only machine. Pass
--fault-log FILE on a first try: llama-cpp-python points stderr at /dev/null while it loads a model, so a crash
there leaves no trace on the terminal, only in that file.

Findings on a lent H200 (2026-11-26): Hearth's exact llama_cpp.Llama arguments and LlamaCppBackend.load each load
the model in a fresh process that first imports the engine (layers assigned to CUDA0, a CUDA0 compute buffer; with
n_gpu_layers=0 nothing offloaded). But when this script built the 932 MiB model in its own process (numpy + the
gguf writer) and then loaded it, llama_model_load_from_file segfaulted, three runs out of three, with and without
the log callback. So the model is now built in a child process; --build-in-process brings the old order back.

How it was run (helper session, lent H100/H200): llama-cpp-python 0.3.36 built on the GPU machine with
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA=OFF -DGGML_NATIVE=OFF
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
(about 210 s on 16 cores), then this script with PYTHONPATH=<install dir>:. and PYTHONUNBUFFERED=1.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference.engine.base import GenerationRequest, ModelSpec
from inference.engine.formats import detect_format
from inference.engine.llamacpp import LlamaCppBackend
from inference.engine.sampling import SamplingParams
from tests.factories import TINY_GGUF_EOS_ID, TINY_GGUF_IM_END_ID, build_tiny_gguf

PROMPT = "The GPU check reads this prompt and then writes whatever the random weights make of it:"
INTERESTING = re.compile(r"offload|CUDA|GPU|model buffer|KV buffer|compute buffer|Device \d")


class LlamaLog:
    """Collects llama.cpp's and ggml's log text through llama_log_set (Hearth loads with verbose=False)."""

    def __init__(self, llama_cpp):
        self.chunks: list[str] = []

        def collect(_level: int, text: bytes, _user_data) -> None:
            self.chunks.append(text.decode("utf-8", errors="replace"))

        self.callback = llama_cpp.llama_log_callback(collect)  # kept here so ctypes never frees it
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))

    def take_lines(self) -> list[str]:
        lines = "".join(self.chunks).splitlines()
        self.chunks.clear()
        return lines


def gpu_memory_mib() -> dict:
    """This process's and the whole card's used GPU memory, as nvidia-smi reports them (MiB)."""
    try:
        apps = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        total = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": str(error)}
    mine = [
        line.split(",")[1].strip()
        for line in apps.splitlines()
        if line.split(",")[0].strip() == str(os.getpid())
    ]
    return {
        "process": int(mine[0]) if mine else None,
        "card": int(total.split()[0]) if total.split() else None,
    }


def decode(model, max_tokens: int) -> dict:
    """One greedy completion of PROMPT; end-of-generation tokens are banned so every run decodes max_tokens."""
    sampling = SamplingParams(temperature=0.0, logit_bias={TINY_GGUF_EOS_ID: -100, TINY_GGUF_IM_END_ID: -100})
    request = GenerationRequest(prompt=PROMPT, sampling=sampling, max_tokens=max_tokens)
    started = time.perf_counter()
    token_ids, done = [], None
    for event in model.generate(request):
        if event.kind == "token" and event.token_id is not None:
            token_ids.append(event.token_id)
        elif event.kind == "done":
            done = event
    return {
        "completion_tokens": done.completion_tokens,
        "prompt_tokens": done.prompt_tokens,
        "time_to_first_token_s": round(done.time_to_first_token, 4),
        "decode_tokens_per_s": round(done.tokens_per_second, 1),
        "wall_s": round(time.perf_counter() - started, 3),
        "token_ids": token_ids,
    }


def run_once(path: Path, n_gpu_layers: int, log: LlamaLog, max_tokens: int) -> dict:
    log.take_lines()
    loaded_at = time.perf_counter()
    model = LlamaCppBackend().load(
        ModelSpec(path=str(path), format="gguf", architecture="llama", n_ctx=1024, n_gpu_layers=n_gpu_layers)
    )
    load_s = time.perf_counter() - loaded_at
    load_lines = [line for line in log.take_lines() if INTERESTING.search(line)]
    memory = gpu_memory_mib()
    try:
        decode(model, 8)  # warm-up: CUDA kernels and graphs are set up on the first tokens
        result = decode(model, max_tokens)
    finally:
        model.close()
    offloaded = [line for line in load_lines if "offloaded" in line]
    print(f"\n== n_gpu_layers={n_gpu_layers}: loaded in {load_s:.2f} s, GPU memory {memory}")
    for line in load_lines:
        print("   llama.cpp:", line.strip())
    print(
        f"   decode: {result['completion_tokens']} tokens at {result['decode_tokens_per_s']} tok/s, "
        f"first token after {result['time_to_first_token_s']} s"
    )
    return {
        "n_gpu_layers": n_gpu_layers,
        "load_s": round(load_s, 3),
        "gpu_memory_mib": memory,
        "offload_lines": offloaded,
        "load_lines": load_lines,
        **result,
    }


class NoLog:
    def take_lines(self) -> list[str]:
        return []


def build_model(args) -> Path:
    """Builds the GGUF in a child process unless --build-in-process (see the module docstring)."""
    path = Path(args.model_dir) / f"random-llama-{args.n_embd}x{args.n_layer}.gguf"
    built_at = time.perf_counter()
    shape = dict(context_length=2048, n_embd=args.n_embd, n_layer=args.n_layer,
                 n_head=16 if args.n_embd >= 1024 else 4, n_head_kv=4 if args.n_embd >= 1024 else 2,
                 n_ff=args.n_ff, name="random-llama")
    if args.build_in_process:
        build_tiny_gguf(path, **shape)
    else:
        code = ("import sys; from pathlib import Path; from tests.factories import build_tiny_gguf; "
                f"build_tiny_gguf(Path({str(path)!r}), **{shape!r})")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    detect_format(path)  # the same header validation import_model runs before any backend sees a file
    print(
        f"model: {path} ({path.stat().st_size / 2**20:.0f} MiB f32, n_embd {args.n_embd}, "
        f"{args.n_layer} layers, n_ff {args.n_ff}), built in {time.perf_counter() - built_at:.1f} s"
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=1024)
    parser.add_argument("--n-layer", type=int, default=16)
    parser.add_argument("--n-ff", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model-dir", default=tempfile.gettempdir())
    parser.add_argument("--out", help="also write the results here as JSON")
    parser.add_argument("--model", help="an existing GGUF to use instead of building one (kept afterwards)")
    parser.add_argument("--layers", default="0,-1", help="the n_gpu_layers values to compare, in order")
    parser.add_argument("--no-log-capture", action="store_true", help="leave llama.cpp's log callback alone")
    parser.add_argument(
        "--fault-log",
        help="faulthandler writes a crash's Python stack here (llama-cpp-python "
        "sends stderr to /dev/null while it loads with verbose=False)",
    )
    parser.add_argument("--build-in-process", action="store_true",
                        help="build the model in this process (segfaulted at the first load on 2026-11-26)")
    parser.add_argument("--quick", action="store_true", help="a tiny model: checks the script, not the GPU")
    args = parser.parse_args()
    if args.quick:
        args.n_embd, args.n_layer, args.n_ff, args.tokens = 128, 2, 256, 16

    if args.fault_log:
        fault_file = open(args.fault_log, "w")  # noqa: SIM115 - open until the process ends
        faulthandler.enable(file=fault_file, all_threads=True)

    import llama_cpp

    log = NoLog() if args.no_log_capture else LlamaLog(llama_cpp)
    # llama_supports_gpu_offload() and llama_print_system_info() are asked only after the loads below: on the
    # CUDA build this check ran against, calling them before the first Llama() was followed by a segfault inside
    # llama_model_load_from_file, while loads without them went through (suspected trigger, not proven).

    path = Path(args.model) if args.model else build_model(args)
    runs = {n: run_once(path, n, log, args.tokens) for n in (int(n) for n in args.layers.split(","))}
    supports_offload = bool(llama_cpp.llama_supports_gpu_offload())
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    print(f"\nllama-cpp-python {llama_cpp.__version__}, llama_supports_gpu_offload() = {supports_offload}")
    print(f"llama_print_system_info(): {system_info}")
    if not args.model:
        path.unlink()
    if set(runs) != {0, -1}:
        print("\n== only", sorted(runs), "ran: no comparison")
        return 0
    cpu, gpu = runs[0], runs[-1]

    all_layers = f"{args.n_layer + 1}/{args.n_layer + 1}"  # llama.cpp counts the output layer too
    offloaded_all = any(f"offloaded {all_layers} layers to GPU" in line for line in gpu["offload_lines"])
    speedup = gpu["decode_tokens_per_s"] / cpu["decode_tokens_per_s"]
    same = sum(a == b for a, b in zip(cpu["token_ids"], gpu["token_ids"], strict=False))
    summary = {
        "llama_cpp_python": llama_cpp.__version__,
        "supports_gpu_offload": supports_offload,
        "system_info": system_info,
        "model": {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_ff": args.n_ff, "dtype": "f32"},
        "cpu": {key: value for key, value in cpu.items() if key != "token_ids"},
        "gpu": {key: value for key, value in gpu.items() if key != "token_ids"},
        "offloaded_every_layer": offloaded_all,
        "decode_speedup": round(speedup, 2),
        "greedy_tokens_equal": f"{same}/{min(len(cpu['token_ids']), len(gpu['token_ids']))}",
    }
    print("\n== summary")
    print(f"   offload lines (-1): {gpu['offload_lines']}")
    print(f"   offload lines (0):  {cpu['offload_lines']}")
    print(
        f"   decode tok/s: n_gpu_layers=0 {cpu['decode_tokens_per_s']}, -1 {gpu['decode_tokens_per_s']} "
        f"(x{speedup:.2f}); greedy tokens equal: {summary['greedy_tokens_equal']}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    passed = supports_offload and offloaded_all and speedup > 1.0
    print("PASS" if passed else "FAIL", "(GPU offload and faster decode)")
    return 0 if passed or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
