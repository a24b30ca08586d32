"""Decode speed of the demo model streamed through the whole Hearth stack, beside llama-cpp-python alone.

Both sides: n_ctx 2048, 2 threads (`--threads`), greedy, 128 tokens of the same raw prompt; decode tokens/s is
measured from the first token to the last, so prompt processing and model loading are left out. On a GPU,
`--gpu-layers 999` offloads every layer on both sides (a CUDA build of llama-cpp-python); `--model` takes another
GGUF than the demo model.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPT = "The capital of France is"
TOKENS = 128
N_CTX = 2048
ROUNDS = 5


def direct_decode_rate(llm) -> float:
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llm.reset()
    stream = llm.generate(tokens, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
    first = last = None
    for count, _token in enumerate(stream, start=1):
        last = time.perf_counter()
        if first is None:
            first = last
        if count == TOKENS:
            break
    stream.close()
    return (TOKENS - 1) / (last - first)


def stack_decode_rate(server) -> float:
    """The client keeps each network read with its arrival time and parses the SSE only after the stream has
    ended, so on this 2-core machine it takes as little CPU as possible from the server it measures."""
    body = {"model": "demo", "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    reads: list[tuple[float, bytes]] = []
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as response:
        for raw in response.iter_raw():
            reads.append((time.perf_counter(), raw))
    first = last = None
    completion_tokens = 0
    buffer = b""
    for arrived, raw in reads:
        buffer += raw
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                last = arrived
                if first is None:
                    first = arrived
    if completion_tokens != TOKENS:
        raise RuntimeError(f"the stack generated {completion_tokens} tokens, not {TOKENS}")
    return (TOKENS - 1) / (last - first)


def main() -> None:
    import argparse

    import llama_cpp

    from bench.concurrency import Machine, add_machine_arguments, demo_model
    from tests.servers import start_embedded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds of each (median)")
    parser.add_argument("--stream-interval-ms", default=None, help="HEARTH_STREAM_INTERVAL_MS for the server")
    add_machine_arguments(parser)
    args = parser.parse_args(sys.argv[1:])
    rounds, threads = args.rounds, args.threads
    extra = {} if args.stream_interval_ms is None else {"HEARTH_STREAM_INTERVAL_MS": args.stream_interval_ms}
    extra.update(Machine(threads, args.gpu_layers).hearth_env())
    model_path = str(args.model or demo_model())
    server = start_embedded(Path(tempfile.mkdtemp(prefix="hearth-bench-")), {"demo": Path(model_path)},
                            HEARTH_MAX_CTX=str(N_CTX), HEARTH_N_THREADS=str(threads), **extra)
    try:
        stack_decode_rate(server)  # load the model in the worker
        llm = llama_cpp.Llama(model_path=model_path, n_ctx=N_CTX, n_threads=threads, n_batch=512, verbose=False,
                              n_gpu_layers=0 if args.gpu_layers is None else args.gpu_layers)
        direct_decode_rate(llm)
        direct, stack = [], []
        for round_ in range(rounds):  # interleaved, in alternating order, so both see the same machine
            if round_ % 2:
                stack.append(stack_decode_rate(server))
                direct.append(direct_decode_rate(llm))
            else:
                direct.append(direct_decode_rate(llm))
                stack.append(stack_decode_rate(server))
    finally:
        server.stop()
    d, s = statistics.median(direct), statistics.median(stack)
    gpu = "" if args.gpu_layers is None else f", {args.gpu_layers} GPU layers"
    print(f"llama.cpp {Path(model_path).name} decode, {TOKENS} tokens, n_ctx {N_CTX}, {threads} threads{gpu} "
          f"(median of {rounds})")
    print(f"  llama-cpp-python direct       {d:8.1f} tok/s   runs: {', '.join(f'{x:.1f}' for x in direct)}")
    print(f"  Hearth stack (SSE, worker)    {s:8.1f} tok/s   runs: {', '.join(f'{x:.1f}' for x in stack)}")
    paired = sorted(b / a for a, b in zip(direct, stack, strict=True))
    print(f"  ratio stack / direct          {s / d:8.3f}   (goal >= 0.97)")
    print(f"  paired ratios (each round)    {statistics.median(paired):8.3f}   median; "
          f"runs: {', '.join(f'{x:.3f}' for x in paired)}")
