"""The GGUF converter knows OLMo, which the torch engine does not: the converted file runs on llama.cpp."""

from __future__ import annotations

import pytest

from inference.engine.base import ModelRefused
from inference.engine.convert import convert_hf_to_gguf, converter_for
from inference.engine.formats import read_gguf_header
from inference.engine.torch.models import architecture_for
from tests.unit.olmo_models import build_tiny_olmo_dir


def test_an_olmo_checkpoint_converts_to_a_gguf_llamacpp_runs(tmp_path):
    import llama_cpp

    gguf = convert_hf_to_gguf(build_tiny_olmo_dir(tmp_path / "olmo"), tmp_path / "olmo.gguf", "f16")
    header = read_gguf_header(gguf)
    assert header.fields["general.architecture"] == "olmo"
    assert header.fields["olmo.attention.clamp_kqv"] == 8.0
    assert not [t.name for t in header.tensors if "norm" in t.name]
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=128, verbose=False)
    assert llm.create_completion("hello", max_tokens=4, temperature=0)["usage"]["completion_tokens"] > 0


def test_the_torch_engine_refuses_olmo_by_its_alias_table():
    with pytest.raises(ModelRefused, match="does not support model_type 'olmo'"):
        architecture_for("olmo")


def test_the_converter_names_what_it_converts_when_it_does_not_know_an_architecture():
    with pytest.raises(ModelRefused, match="does not know model_type 'mamba'; it converts .*olmo"):
        converter_for("mamba")
