"""The torch engine on CUDA: fp16 and bf16 against fp32 on the CPU and against transformers on CUDA.

For each tiny architecture of tests/unit/torch_models.py: greedy tokens and last-position logits of our engine on
CUDA (float16, bfloat16) against our engine in float32 on the CPU and against transformers on CUDA in the same
dtype, a batch at different positions against each sequence alone, and the whole TorchBackend with its default
CUDA dtype. Then decode tok/s of a 24-layer 1024-wide random llama, bf16, ours against transformers.generate.

Needs torch with CUDA, transformers, tokenizers, safetensors, jinja2 and gguf. From the repository root:

    PYTHONPATH=. python3 docs/torch-gpu-check.py /tmp/torch-gpu.json

Measured on a lent H200 (torch 2.11.0+cu130, transformers 5.17, 2026-11-26): every architecture's fp16 greedy
tokens equal the CPU fp32 ones for 32 of 32 steps; bf16 for 8 to 32 of 32 (random tiny weights, bf16 rounding);
logits equal transformers' on CUDA in the same dtype (max abs difference 0.0); batch equals alone; the backend
picked bfloat16 by itself. Decode: ours 45.7 tok/s single, 143.9 batch of 4; transformers 11.4 and 43.0.
Rerun later that day after the CPU speed work (fused q/k/v and gate/up, one SDPA call for GQA decode): the same
correctness figures (llama bf16 now 32/32), but decode ours 13.2 single / 58.4 batch of 4 against transformers
15.0 / 57.6. The decode attention went back to two matmuls on CUDA (the path of the first run; suspected cause:
an SDPA backend that plans anew for each new key length); not re-measured on a GPU yet.
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
from inference.engine.sampling import SamplingParams
from inference.engine.torch.backend import TorchBackend
from inference.engine.torch.generate import decode_one_token, generate_batch, prefill
from inference.engine.torch.loader import load_hf_model
from inference.engine.torch.models.layers import KVCache
from tests.unit.torch_models import PROMPT_IDS, TINY_CONFIGS, build_tiny_model


def new_cache(weights, batch=1, length=128):
    a = weights.args
    return KVCache(a.n_layers, batch, a.n_kv_heads, length, a.head_dim, dtype=weights.dtype, device=weights.device)


def greedy(weights, steps=32):
    cache = new_cache(weights)
    ids = list(PROMPT_IDS)
    logits = prefill(weights.model, cache, ids)
    first = logits.float().cpu()
    for _ in range(steps):
        token = int(torch.argmax(logits))
        ids.append(token)
        logits = decode_one_token(weights.model, cache, torch.tensor([token], device=weights.device),
                                  torch.tensor([len(ids) - 1], device=weights.device))[0]
    return ids[len(PROMPT_IDS):], first


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
        prompts = [PROMPT_IDS, PROMPT_IDS[:3], PROMPT_IDS[2:7]]
        params = SamplingParams(temperature=0)
        alone = [generate_batch(weights.model, new_cache(weights), [p], params=params, max_new_tokens=8)[0]
                 for p in prompts]
        together = generate_batch(weights.model, new_cache(weights, batch=3), prompts, params=params,
                                  max_new_tokens=8)
        result[dtype] = {
            "greedy_equal_to_cpu_fp32": sum(a == b for a, b in zip(tokens, reference_tokens, strict=True)),
            "max_abs_vs_cpu_fp32": round(float((logits - reference_logits).abs().max()), 4),
            "cosine_vs_cpu_fp32": round(float(torch.nn.functional.cosine_similarity(logits, reference_logits, dim=0)), 5),
            "max_abs_vs_transformers_cuda_same_dtype": round(float((logits - hf_logits).abs().max()), 4),
            "batch_equals_alone": together == alone,
        }
    # The whole backend, as the worker runs it: device and dtype from the model's options.
    model = TorchBackend().load(ModelSpec(path=str(directory), format="hf-safetensors", architecture=None,
                                          n_ctx=256, options={"device": "cuda"}))
    events = list(model.generate(GenerationRequest(messages=[{"role": "user", "content": "Hi"}],
                                                   sampling=SamplingParams(temperature=0), max_tokens=16)))
    done = events[-1]
    result["backend_default_dtype"] = str(model.weights.dtype)
    result["backend_done"] = {"finish": done.finish_reason, "tokens": done.completion_tokens}
    model.close()
    return result


def speed(root: Path) -> dict:
    """A 24-layer 1024-wide random llama: decode tok/s for our engine and transformers.generate, bf16, CUDA."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    directory = root / "speed"
    hf.save_pretrained(directory, safe_serialization=True)
    out = {}
    weights = load_hf_model(directory, device="cuda", dtype="bfloat16")
    for batch in (1, 4):
        prompts = [PROMPT_IDS] * batch
        params = SamplingParams(temperature=0)
        generate_batch(weights.model, new_cache(weights, batch=batch, length=512), prompts, params=params,
                       max_new_tokens=8)
        torch.cuda.synchronize()
        t = time.perf_counter()
        generate_batch(weights.model, new_cache(weights, batch=batch, length=512), prompts, params=params,
                       max_new_tokens=128)
        torch.cuda.synchronize()
        out[f"hearth_batch{batch}_tok_s"] = round(128 * batch / (time.perf_counter() - t), 1)
        hf = hf.cuda().eval()
        ids = torch.tensor(prompts, device="cuda")
        hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=128, min_new_tokens=128, do_sample=False)
        torch.cuda.synchronize()
        out[f"transformers_batch{batch}_tok_s"] = round(128 * batch / (time.perf_counter() - t), 1)
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
