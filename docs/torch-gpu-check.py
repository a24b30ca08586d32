"""The torch engine on CUDA: fp16 and bf16 against fp32 on the CPU and against transformers on CUDA, and the
BatchModel (several slots decoded together) against each sequence alone.

For each tiny architecture of tests/unit/torch_models.py: greedy tokens and last-position logits of our engine on
CUDA (float16, bfloat16) against our engine in float32 on the CPU and against transformers on CUDA in the same
dtype; the BatchModel on CUDA: greedy tokens of sequences joining one by one and decoded together against each
alone (fp16, bf16), and in float32 the largest logit difference between together and alone; then requests served
through the scheduler and the output processor with the backend's default CUDA dtype (a seeded sampled request
twice, for the CPU generator fed from CUDA logits). Then decode tok/s of a 24-layer 1024-wide random llama, bf16,
through the BatchModel against transformers.generate.

Needs torch with CUDA, transformers, tokenizers, safetensors and jinja2. From the repository root:

    PYTHONPATH=. python3 docs/torch-gpu-check.py /tmp/torch-gpu.json

Measured on a lent H200 (torch 2.11.0+cu130, transformers 5.17, 2026-11-26), before the BatchModel: every
architecture's fp16 greedy tokens equal the CPU fp32 ones for 32 of 32 steps; bf16 for 8 to 32 of 32 (random tiny
weights, bf16 rounding); logits equal transformers' on CUDA in the same dtype (max abs difference 0.0); batch
equals alone; the backend picked bfloat16 by itself. Decode: ours 45.7 tok/s single, 143.9 batch of 4;
transformers 11.4 and 43.0. Figures of later runs are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from inference.engine.base import GenerationRequest, ModelSpec
from inference.engine.batch import SlotWork
from inference.engine.output import OutputProcessor
from inference.engine.sampling import SamplingParams
from inference.engine.scheduler import Scheduler, Sequence
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.generate import decode_one_token, prefill
from inference.engine.torch.loader import load_hf_model
from inference.engine.torch.models.layers import KVCache
from tests.unit.torch_models import PROMPT_IDS, TINY_CONFIGS, build_tiny_model, make_tokenizer

GREEDY = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0))
PROMPTS = [PROMPT_IDS, PROMPT_IDS[:3], PROMPT_IDS[2:7], [7]]


def greedy(weights, steps=32):
    """Greedy tokens and the prompt's last logits, through the named steps."""
    a = weights.args
    cache = KVCache(a.n_layers, 1, a.n_kv_heads, 128, a.head_dim, dtype=weights.dtype, device=weights.device)
    ids = list(PROMPT_IDS)
    logits = prefill(weights.model, cache, ids)
    first = logits.float().cpu()
    for _ in range(steps):
        ids.append(int(torch.argmax(logits)))
        logits = decode_one_token(weights.model, cache, ids[-1:], [len(ids) - 1])[0]
    return ids[len(PROMPT_IDS):], first


def batch_model(directory, dtype=None, n_slots=4, n_ctx=128, device="cuda"):
    options = {"device": device} | ({"dtype": dtype} if dtype else {})
    return TorchBackend().load(ModelSpec(path=str(directory), format="hf-safetensors", n_ctx=n_ctx,
                                         n_slots=n_slots, options=options))


def decode_alone(model, prompt, forced, slot=0):
    """Greedy tokens and the logits of each of len(forced) steps for one sequence; after step i, `forced[i]` is
    fed in (None: its own greedy token)."""
    model.kv_trim(slot, 0)
    tokens, logits = [], []
    item = SlotWork(slot, list(prompt), 0, True)
    for step in range(len(forced)):
        logits.append(model.logits([item])[0].float().cpu())
        tokens.append(int(torch.argmax(logits[-1])))
        fed = forced[step] if forced[step] is not None else tokens[-1]
        item = SlotWork(slot, [fed], len(prompt) + step, True)
    return tokens, logits


def decode_together(model, prompts, forced):
    """The same, every sequence in its own slot, sequence i joining at step i (its prompt read beside the
    others' decode steps); `forced[i]` tokens fed in after each step (None: its own greedy token)."""
    for slot in range(len(prompts)):
        model.kv_trim(slot, 0)
    tokens = [[] for _ in prompts]
    logits = [[] for _ in prompts]
    step = 0
    while any(len(t) < len(f) for t, f in zip(tokens, forced, strict=True)):
        work = []
        for i, prompt in enumerate(prompts):
            done = len(tokens[i])
            if i > step or done >= len(forced[i]):
                continue
            if done == 0:
                work.append(SlotWork(i, list(prompt), 0, True))
            else:
                fed = forced[i][done - 1] if forced[i][done - 1] is not None else tokens[i][-1]
                work.append(SlotWork(i, [fed], len(prompt) + done - 1, True))
        for item, row in zip(work, model.logits(work), strict=True):
            logits[item.slot].append(row.float().cpu())
            tokens[item.slot].append(int(torch.argmax(row)))
        step += 1
    return tokens, logits


def together_vs_alone(model, steps=8):
    free = [[None] * steps for _ in PROMPTS]
    alone = [decode_alone(model, p, f)[0] for p, f in zip(PROMPTS, free, strict=True)]
    together = decode_together(model, PROMPTS, free)[0]
    forced = alone  # the same tokens fed in both: the logits compare step by step
    alone_logits = [decode_alone(model, p, f)[1] for p, f in zip(PROMPTS, forced, strict=True)]
    together_logits = decode_together(model, PROMPTS, forced)[1]
    difference = max(float((a - b).abs().max()) for rows_a, rows_b in zip(alone_logits, together_logits, strict=True)
                     for a, b in zip(rows_a, rows_b, strict=True))
    return together == alone, difference


def serve(model, requests):
    scheduler = Scheduler(model, slots=model.n_slots)
    processors = {}
    for i, request in enumerate(requests):
        prompt = model.tokenize(model.render_prompt(request))
        processors[str(i)] = OutputProcessor(model.detokenize, model.eog_ids, request.max_tokens, n_prompt=len(prompt))
        scheduler.add(Sequence(str(i), "user", prompt, model.sampler(request, prompt, len(prompt)), n_prompt=len(prompt)))
    while scheduler.has_work():
        for output in scheduler.step():
            processor = processors[output.sequence.id]
            processor.add(output.token)
            if processor.finished:
                scheduler.finish(output.sequence.id)
    return [(p.text, p.finish_reason, p.completion_tokens) for p in processors.values()]


def check_architecture(name: str, root: Path) -> dict:
    import transformers

    directory = build_tiny_model(root / name, name)
    reference_tokens, reference_logits = greedy(load_hf_model(directory, device="cpu", dtype="float32"))
    result = {}
    for dtype in ("float16", "bfloat16"):
        weights = load_hf_model(directory, device="cuda", dtype=dtype)
        assert weights.model.embed.weight.device.type == "cuda"
        assert str(weights.model.embed.weight.dtype) == f"torch.{dtype}"
        tokens, logits = greedy(weights)
        hf = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=getattr(torch, dtype)).cuda()
        with torch.no_grad():
            hf_logits = hf(torch.tensor([PROMPT_IDS], device="cuda")).logits[0, -1].float().cpu()
        model = batch_model(directory, dtype)
        batch_equal, batch_difference = together_vs_alone(model)
        model.close()
        result[dtype] = {
            "greedy_equal_to_cpu_fp32": sum(a == b for a, b in zip(tokens, reference_tokens, strict=True)),
            "max_abs_vs_cpu_fp32": round(float((logits - reference_logits).abs().max()), 4),
            "cosine_vs_cpu_fp32": round(float(torch.nn.functional.cosine_similarity(logits, reference_logits, dim=0)), 5),
            "max_abs_vs_transformers_cuda_same_dtype": round(float((logits - hf_logits).abs().max()), 4),
            "batch_equals_alone": batch_equal,
            "batch_max_abs_logit_difference": round(batch_difference, 4),
        }
    model = batch_model(directory, "float32")
    batch_equal, batch_difference = together_vs_alone(model)
    model.close()
    result["float32"] = {"batch_equals_alone": batch_equal, "batch_max_abs_logit_difference": batch_difference}
    # The backend as the worker runs it: device from the model's options, dtype chosen by the backend.
    model = batch_model(directory, n_ctx=256)
    chat = GenerationRequest(messages=[{"role": "user", "content": "Hi"}], sampling=SamplingParams(temperature=0),
                             max_tokens=16)
    seeded = GenerationRequest(prompt="Hearth", sampling=SamplingParams(temperature=0.8, seed=5), max_tokens=16)
    first, second = serve(model, [chat, seeded]), serve(model, [seeded])
    result["backend_default_dtype"] = str(model.weights.dtype)
    result["backend_served"] = [{"finish": f, "tokens": n} for _, f, n in first]
    result["seeded_text_repeats"] = first[1][0] == second[0][0]
    model.close()
    return result


def decode_speed(model, batch: int, tokens: int) -> float:
    samplers = [model.sampler(GREEDY, PROMPT_IDS, len(PROMPT_IDS)) for _ in range(batch)]
    outputs = [[] for _ in range(batch)]
    for slot in range(batch):
        model.kv_trim(slot, 0)
    work = [SlotWork(slot, PROMPT_IDS, 0, True, samplers[slot]) for slot in range(batch)]
    torch.cuda.synchronize()
    started = time.perf_counter()
    while len(outputs[0]) < tokens:
        for sampled in model.decode(work):
            outputs[sampled.slot].append(sampled.token)
        work = [SlotWork(slot, out[-1:], len(PROMPT_IDS) + len(out) - 1, True, samplers[slot])
                for slot, out in enumerate(outputs)]
    torch.cuda.synchronize()
    return tokens * batch / (time.perf_counter() - started)


def speed(root: Path) -> dict:
    """A 24-layer 1024-wide random llama: decode tok/s for our engine and transformers.generate, bf16, CUDA."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    directory = root / "speed"
    hf.save_pretrained(directory, safe_serialization=True)
    make_tokenizer(directory)  # the backend loads one; the ids fed here need none of it
    out = {}
    model = batch_model(directory, "bfloat16", n_ctx=512)
    hf = hf.cuda().eval()
    for batch in (1, 4):
        decode_speed(model, batch, 8)
        out[f"hearth_batch{batch}_tok_s"] = round(decode_speed(model, batch, 128), 1)
        ids = torch.tensor([PROMPT_IDS] * batch, device="cuda")
        hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=128, min_new_tokens=128, do_sample=False)
        torch.cuda.synchronize()
        out[f"transformers_batch{batch}_tok_s"] = round(128 * batch / (time.perf_counter() - t), 1)
    model.close()
    return out


def main() -> int:
    out_path = Path(sys.argv[1])
    report = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    root = Path(tempfile.mkdtemp())
    for name in sorted(TINY_CONFIGS):
        try:
            report[name] = check_architecture(name, root)
        except Exception:
            report[name] = {"error": traceback.format_exc()[-2000:]}
        print(name, json.dumps(report[name]), flush=True)
        out_path.write_text(json.dumps(report, indent=2))
    try:
        report["speed"] = speed(root)
    except Exception:
        report["speed"] = {"error": traceback.format_exc()[-2000:]}
    print("speed", json.dumps(report["speed"]), flush=True)
    out_path.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
