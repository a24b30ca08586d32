"""Tiny real models and hostile files, built on the spot for tests. Plain functions, no fixtures.

    build_tiny_gguf(path)        a llama (or gemma3) GGUF that llama.cpp loads and runs, in ~50 ms
    build_tiny_hf_dir(path)      a Hugging Face llama directory: config.json, model.safetensors,
                                 tokenizer.json (byte-level BPE), tokenizer_config.json
    build_tiny_mlx_dir(path)     the same, marked as an mlx-lm 4-bit model (for format detection only)
    write_*                      files a careless or hostile user might import

Weights are random with a fixed seed: the models produce gibberish, deterministically.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")

# Words whose SentencePiece pieces (and every prefix of them) make up the tiny vocabularies.
_WORDS = (
    "the", "and", "you", "that", "was", "for", "are", "with", "his", "they", "this", "have", "from",
    "one", "had", "word", "but", "not", "what", "all", "were", "when", "your", "can", "said", "there",
    "use", "each", "which", "she", "how", "their", "will", "other", "about", "out", "many", "then",
    "them", "these", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look",
    "hello", "world", "user", "assistant", "system", "model", "answer", "question", "yes", "no",
)  # fmt: skip
_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()"

# llama.cpp token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


# --- GGUF -----------------------------------------------------------------------------------------


def tiny_spm_vocab() -> list[tuple[str, float, int]]:
    """(piece, score, token type) for a SentencePiece-style ("llama") vocabulary.

    Ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 the byte tokens <0x00>..<0xFF>, 259 <|im_start|>,
    260 <|im_end|>, then "▁", single characters and every prefix of "▁word" for the words above.
    """
    vocab = [("<unk>", 0.0, _UNKNOWN), ("<s>", 0.0, _CONTROL), ("</s>", 0.0, _CONTROL)]
    vocab += [(f"<0x{b:02X}>", 0.0, _BYTE) for b in range(256)]
    vocab += [(token, 0.0, _CONTROL) for token in CHATML_SPECIAL_TOKENS]
    pieces = ["▁", *_CHARACTERS]
    for word in _WORDS:
        spelled = "▁" + word
        pieces += [spelled[:end] for end in range(2, len(spelled) + 1)]
    unique_pieces = list(dict.fromkeys(pieces))
    # SentencePiece merges the pair whose result scores highest: longer pieces win.
    vocab += [(piece, float(len(piece)) - i / 1e4, _NORMAL) for i, piece in enumerate(unique_pieces)]
    return vocab


TINY_GGUF_BOS_ID, TINY_GGUF_EOS_ID = 1, 2
TINY_GGUF_IM_START_ID, TINY_GGUF_IM_END_ID = 259, 260


def build_tiny_gguf(
    path: str | Path,
    *,
    arch: str = "llama",
    chat_template: str | None = CHATML,
    context_length: int = 512,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    seed: int = 0,
    vocab: str = "bytes",
    file_type: int | None = 0,  # gguf.LlamaFileType: 0 is ALL_F32; None leaves general.file_type out
    name: str | None = "tiny",
) -> Path:
    """A real GGUF with f32 random weights that llama.cpp loads and generates from."""
    import gguf  # imported here so that `tests.factories` stays cheap to import

    if vocab != "bytes":
        raise ValueError("only the byte-fallback SentencePiece vocabulary ('bytes') is built")
    if arch not in ("llama", "gemma3"):
        raise ValueError(f"build_tiny_gguf builds llama or gemma3, not {arch!r}")
    path = Path(path)
    pieces = tiny_spm_vocab()
    head_dim = n_embd // n_head
    writer = gguf.GGUFWriter(path, arch)
    if name is not None:
        writer.add_name(name)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10_000.0)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(context_length // 2)

    writer.add_tokenizer_model("llama")
    writer.add_token_list([piece for piece, _, _ in pieces])
    writer.add_token_scores([score for _, score, _ in pieces])
    writer.add_token_types([token_type for _, _, token_type in pieces])
    writer.add_bos_token_id(TINY_GGUF_BOS_ID)
    writer.add_eos_token_id(TINY_GGUF_EOS_ID)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    for tensor_name, tensor in _tiny_gguf_tensors(
        arch, len(pieces), n_embd, n_layer, n_head, n_head_kv, n_ff, seed
    ).items():
        writer.add_tensor(tensor_name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tiny_gguf_tensors(
    arch: str, n_vocab: int, n_embd: int, n_layer: int, n_head: int, n_head_kv: int, n_ff: int, seed: int
) -> dict[str, np.ndarray]:
    """llama.cpp tensor names; numpy shapes are (rows, columns), the reverse of GGUF's dims."""
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head

    def matrix(rows: int, columns: int) -> np.ndarray:
        return (rng.standard_normal((rows, columns)) * 0.5).astype(np.float32)

    def norm(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    tensors = {"token_embd.weight": matrix(n_vocab, n_embd)}  # (n_vocab, n_embd)
    for i in range(n_layer):
        block = f"blk.{i}"
        tensors[f"{block}.attn_norm.weight"] = norm(n_embd)
        tensors[f"{block}.attn_q.weight"] = matrix(n_head * head_dim, n_embd)
        tensors[f"{block}.attn_k.weight"] = matrix(n_head_kv * head_dim, n_embd)
        tensors[f"{block}.attn_v.weight"] = matrix(n_head_kv * head_dim, n_embd)
        tensors[f"{block}.attn_output.weight"] = matrix(n_embd, n_head * head_dim)
        tensors[f"{block}.ffn_norm.weight"] = norm(n_embd)
        tensors[f"{block}.ffn_gate.weight"] = matrix(n_ff, n_embd)
        tensors[f"{block}.ffn_up.weight"] = matrix(n_ff, n_embd)
        tensors[f"{block}.ffn_down.weight"] = matrix(n_embd, n_ff)
        if arch == "gemma3":
            tensors[f"{block}.attn_q_norm.weight"] = norm(head_dim)
            tensors[f"{block}.attn_k_norm.weight"] = norm(head_dim)
            tensors[f"{block}.post_attention_norm.weight"] = norm(n_embd)
            tensors[f"{block}.post_ffw_norm.weight"] = norm(n_embd)
    tensors["output_norm.weight"] = norm(n_embd)
    # Untied, also for gemma3 (whose real models tie it to token_embd): with tied random weights the
    # input embedding dominates the residual stream and the model repeats its last token forever.
    tensors["output.weight"] = matrix(n_vocab, n_embd)  # (n_vocab, n_embd)
    return tensors


def tiny_gguf_parameter_count(
    *, arch: str = "llama", n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
    n_ff: int = 128,
) -> int:  # fmt: skip
    """The parameter count build_tiny_gguf's model has, worked out by hand."""
    n_vocab, head_dim = len(tiny_spm_vocab()), n_embd // n_head
    attention = 2 * n_embd * n_head * head_dim + 2 * n_embd * n_head_kv * head_dim
    per_layer = 2 * n_embd + attention + 3 * n_embd * n_ff
    if arch == "gemma3":
        per_layer += 2 * head_dim + 2 * n_embd
    return 2 * n_vocab * n_embd + n_layer * per_layer + n_embd  # token_embd, output: n_vocab * n_embd each


# --- Hugging Face and MLX directories -------------------------------------------------------------

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def build_tiny_hf_tokenizer(path: str | Path) -> Path:
    """A byte-level BPE tokenizer.json (GPT-2 style) with ChatML specials, via the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        for spelled in (word, "Ġ" + word):  # "Ġ" is the byte-level space
            left = spelled[0]
            for symbol in spelled[1:]:
                if left + symbol not in vocab:
                    merges.append((left, symbol))
                    vocab[left + symbol] = len(vocab)
                left += symbol
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", *CHATML_SPECIAL_TOKENS])
    path = Path(path)
    tokenizer.save(str(path))
    return path


def build_tiny_hf_dir(
    path: str | Path,
    *,
    model_type: str = "llama",
    dtype: str = "float32",
    chat_template: str | None = CHATML,
    chat_template_in: str = "tokenizer_config",  # or "jinja": chat_template.jinja beside the tokenizer
    context_length: int = 512,
    hidden_size: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    extra_config: dict | None = None,
    safetensors_metadata: dict[str, str] | None = None,
) -> Path:
    """A Hugging Face model directory with transformers' weight names for a tiny llama (or qwen2)."""
    if model_type not in _HF_ARCHITECTURES:
        raise ValueError(f"build_tiny_hf_dir builds {sorted(_HF_ARCHITECTURES)}, not {model_type!r}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_path = build_tiny_hf_tokenizer(directory / "tokenizer.json")
    token_ids = json.loads(tokenizer_path.read_text())["added_tokens"]
    special_ids = {token["content"]: token["id"] for token in token_ids}
    vocab_size = max(special_ids.values()) + 1
    head_dim = hidden_size // n_head

    config = {
        "architectures": [_HF_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context_length,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype,
        "bos_token_id": special_ids["<|endoftext|>"],
        "eos_token_id": special_ids["<|im_end|>"],
        **(extra_config or {}),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None and chat_template_in == "jinja":
        (directory / "chat_template.jinja").write_text(chat_template)
    elif chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))

    rng = np.random.default_rng(seed)

    def matrix(rows: int, columns: int) -> np.ndarray:
        return (rng.standard_normal((rows, columns)) * 0.5).astype(np.float32)

    def vector(size: int, fill: float) -> np.ndarray:
        return np.full(size, fill, dtype=np.float32)

    weights = {"model.embed_tokens.weight": matrix(vocab_size, hidden_size)}  # (vocab, hidden)
    for i in range(n_layer):
        layer = f"model.layers.{i}"
        weights[f"{layer}.input_layernorm.weight"] = vector(hidden_size, 1.0)
        weights[f"{layer}.self_attn.q_proj.weight"] = matrix(n_head * head_dim, hidden_size)
        weights[f"{layer}.self_attn.k_proj.weight"] = matrix(n_head_kv * head_dim, hidden_size)
        weights[f"{layer}.self_attn.v_proj.weight"] = matrix(n_head_kv * head_dim, hidden_size)
        weights[f"{layer}.self_attn.o_proj.weight"] = matrix(hidden_size, n_head * head_dim)
        if model_type == "qwen2":
            weights[f"{layer}.self_attn.q_proj.bias"] = vector(n_head * head_dim, 0.01)
            weights[f"{layer}.self_attn.k_proj.bias"] = vector(n_head_kv * head_dim, 0.01)
            weights[f"{layer}.self_attn.v_proj.bias"] = vector(n_head_kv * head_dim, 0.01)
        weights[f"{layer}.post_attention_layernorm.weight"] = vector(hidden_size, 1.0)
        weights[f"{layer}.mlp.gate_proj.weight"] = matrix(intermediate_size, hidden_size)
        weights[f"{layer}.mlp.up_proj.weight"] = matrix(intermediate_size, hidden_size)
        weights[f"{layer}.mlp.down_proj.weight"] = matrix(hidden_size, intermediate_size)
    weights["model.norm.weight"] = vector(hidden_size, 1.0)
    if not tie_word_embeddings:
        weights["lm_head.weight"] = matrix(vocab_size, hidden_size)
    _save_safetensors(
        weights, dtype, directory / "model.safetensors", safetensors_metadata or {"format": "pt"}
    )
    return directory


def _save_safetensors(
    weights: dict[str, np.ndarray], dtype: str, path: Path, metadata: dict[str, str]
) -> None:
    """float32/float16 through numpy; bfloat16, which numpy lacks, through torch (imported only then)."""
    if dtype == "bfloat16":
        import torch
        from safetensors.torch import save_file as save_torch

        save_torch(
            {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in weights.items()}, str(path), metadata
        )
        return
    from safetensors.numpy import save_file as save_numpy

    save_numpy({k: v.astype(dtype) for k, v in weights.items()}, str(path), metadata)


def tiny_hf_parameter_count(
    *, model_type: str = "llama", hidden_size: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
    intermediate_size: int = 128, tie_word_embeddings: bool = False, vocab_size: int,
) -> int:  # fmt: skip
    head_dim = hidden_size // n_head
    q_and_o = 2 * hidden_size * n_head * head_dim
    k_and_v = 2 * hidden_size * n_head_kv * head_dim
    biases = (n_head + 2 * n_head_kv) * head_dim if model_type == "qwen2" else 0
    per_layer = 2 * hidden_size + q_and_o + k_and_v + biases + 3 * hidden_size * intermediate_size
    lm_head = 0 if tie_word_embeddings else vocab_size * hidden_size
    return vocab_size * hidden_size + n_layer * per_layer + hidden_size + lm_head


def build_tiny_mlx_dir(path: str | Path, *, bits: int = 4, group_size: int = 64, **hf_options) -> Path:
    """A Hugging Face directory whose config.json says mlx-lm quantized it (the weights stay f32:
    this is for format detection, not for running)."""
    quantization = {"group_size": group_size, "bits": bits}
    extra = {"quantization": quantization, "quantization_config": quantization}
    return build_tiny_hf_dir(path, extra_config=extra, **hf_options)


# --- hostile and broken files ---------------------------------------------------------------------


def write_pickle_checkpoint(path: str | Path, *, zip_format: bool = False) -> Path:
    """Pickle bytes like torch.save's: a bare protocol-2 pickle, or the zip archive with data.pkl inside.
    The payload is a harmless dict; the point is that Hearth must refuse it without unpickling."""
    path = Path(path)
    payload = pickle.dumps({"model.embed_tokens.weight": [0.0, 1.0, 2.0]}, protocol=2)
    if not zip_format:
        path.write_bytes(payload)
        return path
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", bytes(16))
        archive.writestr("archive/version", "3\n")
    return path


def write_truncated_gguf(path: str | Path, *, keep_bytes: int | None = None) -> Path:
    """A tiny GGUF cut short (by default in the middle of its tensor data, as an interrupted download)."""
    path = build_tiny_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: keep_bytes if keep_bytes is not None else len(data) // 2])
    return path


def write_gguf_with_version(path: str | Path, version: int) -> Path:
    """A tiny GGUF whose version field says `version`."""
    path = build_tiny_gguf(path)
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", version)
    path.write_bytes(bytes(data))
    return path


def write_gguf_with_absurd_counts(path: str | Path, *, field: str = "tensors") -> Path:
    """A GGUF header that claims absurd sizes. field: "tensors" (2**40 tensors), "keys" (2**40 keys),
    "string" (a key of 2**60 bytes), "array" (an array of 2**40 elements) or "dims" (a tensor with
    2**40 x 2**40 elements)."""
    absurd = 2**40
    header = b"GGUF" + struct.pack("<I", 3)

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    if field == "tensors":
        body = struct.pack("<QQ", absurd, 0)
    elif field == "keys":
        body = struct.pack("<QQ", 0, absurd)
    elif field == "string":
        body = struct.pack("<QQ", 0, 1) + struct.pack("<Q", 2**60) + b"general.architecture"
    elif field == "array":
        array_of_uint32 = struct.pack("<IIQ", 9, 4, absurd)
        body = struct.pack("<QQ", 0, 1) + string("tokenizer.ggml.token_type") + array_of_uint32
    elif field == "dims":
        architecture = string("general.architecture") + struct.pack("<I", 8) + string("llama")
        tensor = string("token_embd.weight") + struct.pack("<IQQIQ", 2, absurd, absurd, 0, 0)
        body = struct.pack("<QQ", 1, 1) + architecture + tensor
    else:
        raise ValueError(f"unknown field {field!r}")
    path = Path(path)
    path.write_bytes(header + body + bytes(64))
    return path


def _gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def _gguf_string_kv(key: str, value: str) -> bytes:
    return _gguf_string(key) + struct.pack("<I", 8) + _gguf_string(value)


MALFORMED_GGUF_PROBLEMS = (
    "value_type", "duplicate_key", "nested_array", "tensor_type", "tensor_offset", "misaligned",
    "block_size", "duplicate_tensor", "no_architecture", "adapter", "no_tensors", "none",
)  # fmt: skip


def write_malformed_gguf(path: str | Path, *, problem: str) -> Path:
    """A small hand-written GGUF (general.architecture "llama", one f32 tensor of 32 elements) broken in
    one way. problem: "value_type" (a key of unknown type 99), "duplicate_key", "nested_array",
    "tensor_type" (ggml type 99), "tensor_offset" (data past the end of the file), "misaligned" (a data
    offset of 4), "block_size" (a Q4_0 tensor of 33 elements per row), "duplicate_tensor",
    "no_architecture", "adapter" (general.type "adapter", as a LoRA), "no_tensors" (vocabulary-only),
    or "none" (a valid file)."""
    if problem not in MALFORMED_GGUF_PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}")
    architecture = _gguf_string_kv("general.architecture", "llama")
    keys = {
        "value_type": [architecture, _gguf_string("general.mystery") + struct.pack("<I", 99) + bytes(8)],
        "duplicate_key": [architecture, architecture],
        "nested_array": [architecture, _gguf_string("general.tags") + struct.pack("<IIQIQ", 9, 9, 1, 4, 0)],
        "no_architecture": [_gguf_string_kv("general.name", "nameless")],
        "adapter": [architecture, _gguf_string_kv("general.type", "adapter")],
    }.get(problem, [architecture])
    tensor_type, row, offset = {
        "tensor_type": (99, 32, 0),
        "tensor_offset": (0, 32, 4096),
        "misaligned": (0, 32, 4),
        "block_size": (2, 33, 0),  # Q4_0: blocks of 32
    }.get(problem, (0, 32, 0))
    tensor = _gguf_string("token_embd.weight") + struct.pack("<IQIQ", 1, row, tensor_type, offset)
    tensors = {"duplicate_tensor": [tensor, tensor], "no_tensors": []}.get(problem, [tensor])
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(keys)) + b"".join(keys) + b"".join(tensors)
    padding = bytes(-len(header) % 32)
    path = Path(path)
    path.write_bytes(header + padding + bytes(128 * len(tensors)))
    return path


def write_corrupt_safetensors(path: str | Path, *, problem: str = "header_length") -> Path:
    """A safetensors file broken in one way. problem: "header_length" (the length field points past the
    end), "huge_header" (claims 1 GB of header), "json" (the header is not JSON), "dtype" (an unknown
    dtype), "offsets" (data_offsets past the data), "shape" (offsets disagree with shape x dtype),
    "truncated" (a valid header whose data was cut off)."""
    good = {"weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    data = bytes(24)
    if problem == "header_length":
        content = struct.pack("<Q", 10_000) + b'{"weight": {}}'
    elif problem == "huge_header":
        content = struct.pack("<Q", 1 << 30) + b"{" + bytes(100)
    elif problem == "json":
        text = b"{this is not json}"
        content = struct.pack("<Q", len(text)) + text + data
    else:
        header = json.loads(json.dumps(good))
        if problem == "dtype":
            header["weight"]["dtype"] = "F128"
        elif problem == "offsets":
            header["weight"]["data_offsets"] = [0, 4000]
        elif problem == "shape":
            header["weight"]["shape"] = [2, 2]
        elif problem == "truncated":
            data = data[:10]
        else:
            raise ValueError(f"unknown problem {problem!r}")
        text = json.dumps(header).encode()
        content = struct.pack("<Q", len(text)) + text + data
    path = Path(path)
    path.write_bytes(content)
    return path
