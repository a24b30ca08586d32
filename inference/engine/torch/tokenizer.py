"""Text <-> token ids with the `tokenizers` library: from `tokenizer.json`, or rebuilt from the
vocabulary stored in a GGUF file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from inference.engine.base import ModelRefused
from inference.engine.formats import read_hf_config, read_json_object

# Tokens that end an assistant turn in the chat formats we know; stop ids when the vocabulary has them.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>")

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space
# Pre-tokenizer regexes of byte-level BPE vocabularies, by GGUF `tokenizer.ggml.pre`.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL_SPLITS = {"llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}


class TextTokenizer:
    """Encodes prompts (special tokens in the text become their ids; one BOS at most) and decodes."""

    def __init__(self, tokenizer: Tokenizer, *, bos_token: str | None, eos_token: str | None, add_bos: bool,
                 stop_ids: set[int]):
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self.add_bos = add_bos and self.bos_id is not None
        self.stop_ids = frozenset(stop_ids)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise ModelRefused(f"{path} has no tokenizer.json; the torch engine needs one.")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = read_json_object(path / "tokenizer_config.json", "The tokenizer's") or {}
        bos_token, eos_token = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        bos_id = tokenizer.token_to_id(bos_token) if bos_token else None
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # ask the post-processor whether it prepends BOS
            add_bos = bos_id is not None and tokenizer.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
        stop_ids = set()
        for source in (read_json_object(path / "generation_config.json", "The model's") or {}, read_hf_config(path)):
            stop_ids |= _as_id_set(source.get("eos_token_id"))
        if eos_token and tokenizer.token_to_id(eos_token) is not None:
            stop_ids.add(tokenizer.token_to_id(eos_token))
        stop_ids |= _end_of_turn_ids(tokenizer)
        return cls(tokenizer, bos_token=bos_token, eos_token=eos_token, add_bos=bool(add_bos), stop_ids=stop_ids)

    @classmethod
    def from_gguf_vocab(cls, meta: dict[str, Any]) -> TextTokenizer:
        """Rebuild the tokenizer from a GGUF's `tokenizer.ggml.*` keys."""
        kind = meta.get("tokenizer.ggml.model")
        tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
        if not tokens:
            raise ModelRefused("This GGUF file has no vocabulary (tokenizer.ggml.tokens).")
        types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if kind == "llama":
            tokenizer = _sentencepiece_bpe(tokens, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens), types,
                                           add_space_prefix=meta.get("tokenizer.ggml.add_space_prefix", True))
        elif kind == "gpt2":
            tokenizer = _byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [],
                                        meta.get("tokenizer.ggml.pre", "default"))
        else:
            raise ModelRefused(f"Unsupported GGUF tokenizer model {kind!r}: supported are llama and gpt2.")
        _add_special_tokens(tokenizer, tokens, types)

        def token_at(key: str) -> str | None:
            index = meta.get(key)
            return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

        stop_ids = {meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                      "tokenizer.ggml.eom_token_id") if isinstance(meta.get(k), int)}
        stop_ids |= _end_of_turn_ids(tokenizer)
        return cls(tokenizer, bos_token=token_at("tokenizer.ggml.bos_token_id"),
                   eos_token=token_at("tokenizer.ggml.eos_token_id"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")), stop_ids=stop_ids)


def _sentencepiece_bpe(tokens: list[str], scores: list[float], types: list[int], *, add_space_prefix: bool
                       ) -> Tokenizer:
    """SentencePiece-style BPE: pieces merge in order of the merged piece's score, unknown
    characters fall back to <0xNN> byte tokens."""
    vocab = {token: i for i, token in enumerate(tokens)}
    mergeable = {t: s for t, s, kind in zip(tokens, scores, types, strict=False) if kind == NORMAL}
    merges = []
    for piece, score in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = next((t for t, kind in zip(tokens, types, strict=False) if kind == UNKNOWN), None)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk,
                                     fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend(SPM_SPACE)] if add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPM_SPACE)])
    decode_steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in BYTE_LEVEL_SPLITS))
    if pre in BYTE_LEVEL_SPLITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(BYTE_LEVEL_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _add_special_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens (e.g. <start_of_turn>) and user-defined ones match as whole tokens in text."""
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=False)
               if k == CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types, strict=False)
            if k == USER_DEFINED]
    tokenizer.add_special_tokens(control)
    tokenizer.add_tokens(user)


def _end_of_turn_ids(tokenizer: Tokenizer) -> set[int]:
    return {i for i in (tokenizer.token_to_id(t) for t in END_OF_TURN_TOKENS) if i is not None}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _as_id_set(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int)}
    return set()
