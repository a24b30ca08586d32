"""Tiny random models of each architecture, built with transformers configs and saved as safetensors.

`build_tiny_model(tmp_path, name)` returns the directory; the model is re-seeded until its greedy
top-1 logit margin is above `MIN_MARGIN` at every compared step, so comparisons are not decided by
rounding. `our_greedy_tokens(weights, prompt, steps)` runs our engine's named steps on one sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from inference.engine.torch.generate import decode_one_token, prefill
from inference.engine.torch.models.layers import KVCache

MIN_MARGIN = 1e-3
STEPS = 32
PROMPT_IDS = [1, 17, 42, 99, 7, 230, 5, 64]
VOCAB = 320
CORPUS = [
    "Hearth is a self-hosted LLM server for a small team.",
    "The quick brown fox jumps over the lazy dog. Ünïcödé text: café, naïve, 日本語, emoji 🔥.",
    "def add(a, b):\n    return a + b\n",
] * 20
SPECIALS = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
              bos_token_id=0, eos_token_id=1)

TINY_CONFIGS = {
    "llama": dict(model_type="llama", num_hidden_layers=2, rope_theta=10000.0),
    "llama3": dict(model_type="llama", num_hidden_layers=2, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "mistral": dict(model_type="mistral", num_hidden_layers=2, sliding_window=24),
    "qwen2": dict(model_type="qwen2", num_hidden_layers=2, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", num_hidden_layers=2, head_dim=32, tie_word_embeddings=False),
    "gemma3_text": dict(model_type="gemma3_text", num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16,
                        sliding_window=12, rope_theta=1_000_000.0),
}
# llama.cpp runs Mistral without its sliding window: the conversion checks use one without.
CONVERTIBLE = {**TINY_CONFIGS, "mistral": dict(TINY_CONFIGS["mistral"], sliding_window=None)}


def make_config(name: str, configs: dict = TINY_CONFIGS):
    from transformers import AutoConfig

    spec = dict(configs[name])
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **COMMON, **spec)


def make_tokenizer(directory: Path) -> None:
    """A byte-level BPE vocabulary trained on a few sentences, with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "chat_template": CHATML,
    }))


def greedy_margins(model, prompt_ids: list[int], steps: int = STEPS) -> tuple[list[int], float]:
    """transformers' greedy tokens from `prompt_ids` and the smallest top-1 margin on the way."""
    ids = torch.tensor([prompt_ids])
    tokens, margin = [], float("inf")
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            token = int(torch.argmax(logits))
            tokens.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, margin


def build_tiny_model(directory: Path, name: str, configs: dict = TINY_CONFIGS, *, max_seeds: int = 20) -> Path:
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    config = make_config(name, configs)
    for seed in range(max_seeds):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
        _, margin = greedy_margins(model, PROMPT_IDS)
        if margin > MIN_MARGIN:
            model.save_pretrained(directory, safe_serialization=True)
            make_tokenizer(directory)
            return directory
    raise AssertionError(f"No seed gave {name} a top-1 margin above {MIN_MARGIN}")


def our_greedy_tokens(weights, prompt_ids: list[int], steps: int) -> list[int]:
    """Our engine's greedy tokens for one sequence: `prefill`, then `decode_one_token` after each argmax."""
    args = weights.args
    cache = KVCache(args.n_layers, 1, args.n_kv_heads, len(prompt_ids) + steps, args.head_dim,
                    dtype=weights.dtype, device=weights.device)
    logits = prefill(weights.model, cache, prompt_ids)
    tokens: list[int] = []
    while len(tokens) < steps:
        tokens.append(int(torch.argmax(logits.float())))
        logits = decode_one_token(weights.model, cache, tokens[-1:], [len(prompt_ids) + len(tokens) - 1])[0]
    return tokens
