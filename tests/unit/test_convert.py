"""HF -> GGUF: llama.cpp runs the converted tiny models to the same greedy tokens as our engine,
and our GGUF loader undoes llama.cpp's transforms exactly."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (the reference these tests compare against)

from inference.engine.base import ModelRefused
from inference.engine.convert import convert_hf_to_gguf
from inference.engine.torch.gguf_loader import load_gguf_model
from inference.engine.torch.loader import load_hf_model
from inference.engine.torch.models.layers import ForwardStep, KVCache
from tests.unit.torch_models import CONVERTIBLE, PROMPT_IDS, STEPS, build_tiny_model, our_greedy_tokens

GGML_TYPE_F32 = 0


@pytest.fixture(scope="module", params=sorted(CONVERTIBLE))
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    directory = build_tiny_model(root / "hf", request.param, CONVERTIBLE)
    fractions = []
    path = convert_hf_to_gguf(directory, root / "model-f32.gguf", "f32", fractions.append)
    return directory, path, fractions


def last_logits(llm) -> np.ndarray:
    """The logits of the last evaluated token (llama-cpp-python keeps no scores without logits_all)."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def llama_cpp_greedy_tokens(path) -> list[int]:
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=False, verbose=False,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, n_batch=64)
    try:
        tokens = []
        llm.eval(PROMPT_IDS)
        for _ in range(STEPS):
            token = int(np.argmax(last_logits(llm)))
            tokens.append(token)
            llm.eval([token])
        return tokens
    finally:
        llm.close()


def test_llama_cpp_gives_the_same_greedy_tokens_as_our_engine(converted):
    directory, path, fractions = converted
    ours = our_greedy_tokens(load_hf_model(directory, device="cpu", dtype="float32"), PROMPT_IDS, STEPS)
    assert llama_cpp_greedy_tokens(path) == ours
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_our_gguf_loader_undoes_the_conversion_exactly(converted):
    directory, path, _ = converted
    hf = load_hf_model(directory, device="cpu", dtype="float32")
    gguf_weights, _, _ = load_gguf_model(path, device="cpu", dtype="float32")
    ids = torch.tensor([PROMPT_IDS])
    positions = torch.arange(len(PROMPT_IDS))[None]

    def logits(weights):
        args = weights.args
        cache = KVCache(args.n_layers, 1, args.n_kv_heads, 32, args.head_dim, dtype=torch.float32)
        with torch.inference_mode():
            return weights.model(ids, ForwardStep(positions), cache, last_only=False)

    assert (logits(hf) - logits(gguf_weights)).abs().max().item() < 1e-5


def test_the_gguf_vocabulary_rebuilds_the_same_tokenizer(converted):
    from inference.engine.torch.tokenizer import TextTokenizer

    directory, path, _ = converted
    _, rebuilt, _ = load_gguf_model(path, device="cpu")
    original = TextTokenizer.from_hf_dir(directory)
    text = "<|im_start|>user\nThe quick brown fox, café 🔥<|im_end|>"
    assert rebuilt.encode(text) == original.encode(text)
    assert rebuilt.decode(original.encode(text)) == original.decode(original.encode(text))


def test_q8_0_quantization_makes_a_file_llama_cpp_runs(tmp_path):
    directory = build_tiny_model(tmp_path / "hf", "llama", CONVERTIBLE)
    path = convert_hf_to_gguf(directory, tmp_path / "model-q8_0.gguf", "q8_0")
    assert path.stat().st_size > 0
    assert not list(tmp_path.glob("*.partial"))
    assert len(llama_cpp_greedy_tokens(path)) == STEPS


def test_it_refuses_an_unknown_output_type(tmp_path):
    with pytest.raises(ModelRefused, match="q4_k_m"):
        convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf", "q3_zz")


def test_q4_k_m_quantization_uses_k_quants_and_llama_cpp_runs_it(tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.unit.torch_models import make_tokenizer

    # k-quants pack rows of 256 values: a model 256 wide gets real Q4_K tensors (narrower rows fall back).
    config = LlamaConfig(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf", safe_serialization=True)
    make_tokenizer(tmp_path / "hf")
    f16 = convert_hf_to_gguf(tmp_path / "hf", tmp_path / "model-f16.gguf", "f16")
    path = convert_hf_to_gguf(tmp_path / "hf", tmp_path / "model-q4_k_m.gguf", "q4_k_m")
    reader = gguf.GGUFReader(path)
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    tensor_types = {tensor.tensor_type.name for tensor in reader.tensors}
    assert "Q4_K" in tensor_types
    assert path.stat().st_size < 0.6 * f16.stat().st_size
    assert not list(tmp_path.glob("*.partial"))
    assert len(llama_cpp_greedy_tokens(path)) == STEPS
