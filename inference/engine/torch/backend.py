"""The torch backend: Hugging Face safetensors directories and GGUF files on our own PyTorch engine.

`TorchBackend().load(spec)` loads the weights, the tokenizer and the chat template and returns a
`TorchBatchModel` (batch_model.py): `spec.n_slots` KV cache rows of `n_ctx` positions, decoded together.
"""

from __future__ import annotations

import torch

from inference.engine.backends import TORCH
from inference.engine.base import ModelRefused, ModelSpec
from inference.engine.chat_template import ChatTemplate
from inference.engine.formats import read_hf_config
from inference.engine.torch.batch_model import TorchBatchModel
from inference.engine.torch.loader import LoadedWeights, load_hf_model
from inference.engine.torch.models import matvec
from inference.engine.torch.tokenizer import TextTokenizer


class TorchBackend:
    name = TORCH.name
    capabilities = TORCH.capabilities  # sampling only: no grammars, logprobs or embeddings

    def unavailable_reason(self) -> str | None:
        return None  # torch is a core dependency; CPU always works

    def load(self, spec: ModelSpec) -> TorchBatchModel:
        """`spec.options`: "dtype" (float32, bfloat16, float16) and "device" (cpu, cuda). A slot holds
        `n_ctx` = min(spec.n_ctx, the model's positions, spec.kv_tokens when set) positions."""
        if spec.n_threads:
            torch.set_num_threads(spec.n_threads)
        device, dtype = spec.options.get("device"), spec.options.get("dtype")
        if spec.format == "hf-safetensors":
            weights = load_hf_model(spec.path, device=device, dtype=dtype)
            tokenizer = TextTokenizer.from_hf_dir(spec.path)
            architecture = spec.architecture or read_hf_config(spec.path)["model_type"]
            gguf_template = None
        elif spec.format == "gguf":
            from inference.engine.torch.gguf_loader import load_gguf_model

            weights, tokenizer, header = load_gguf_model(spec.path, device=device, dtype=dtype)
            architecture = spec.architecture or header.get("general.architecture", "")
            gguf_template = header.get("tokenizer.chat_template")
        else:
            raise ModelRefused(f"The torch engine runs hf-safetensors and gguf models, not {spec.format!r}.")
        added_tokens = {t.content for t in tokenizer.tokenizer.get_added_tokens_decoder().values()}
        chat_template = ChatTemplate.for_model(
            spec.path, architecture=architecture, gguf_template=gguf_template, override=spec.chat_template,
            special_tokens=added_tokens, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "",
        )
        n_ctx = min(spec.n_ctx, _model_context(weights), spec.kv_tokens or spec.n_ctx)
        matvec.warm_up(weights.args.hidden_size, weights.dtype, weights.device)  # compile now, not mid-request
        return TorchBatchModel(weights, tokenizer, chat_template, n_ctx=n_ctx, n_slots=max(1, spec.n_slots),
                               kv_tokens=spec.kv_tokens)


def _model_context(weights: LoadedWeights) -> int:
    return int(getattr(weights.args, "max_position_embeddings", 0) or 1 << 30)
