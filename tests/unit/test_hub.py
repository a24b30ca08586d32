"""inference/hub.py's choices, without a hub: names as people and Ollama write them, quantizations from file names,
which GGUF file a pull takes, which files of a safetensors repo; and Ollama's pull progress lines."""

from __future__ import annotations

import pytest

from api.schemas.ollama import PullProgress
from inference import hub
from inference.hub import HubError, RepoFile


@pytest.mark.parametrize(("written", "expected"), [
    ("Qwen/Qwen3-0.6B-GGUF", ("Qwen/Qwen3-0.6B-GGUF", "")),
    ("hf.co/Qwen/Qwen3-0.6B-GGUF:Q4_K_M", ("Qwen/Qwen3-0.6B-GGUF", "Q4_K_M")),
    ("huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF:latest", ("bartowski/Llama-3.2-1B-Instruct-GGUF", "")),
    ("https://huggingface.co/acme/tiny-hf", ("acme/tiny-hf", "")),
    ("acme/Tiny-GGUF:tiny-Q8_0.gguf", ("acme/Tiny-GGUF", "tiny-Q8_0.gguf")),
    ("  acme/tiny  ", ("acme/tiny", "")),
])
def test_it_reads_a_model_name_as_ollama_and_people_write_it(written, expected):
    assert hub.parse_reference(written) == expected


@pytest.mark.parametrize("written", ["llama3.2", "", "/etc/passwd", "../acme/x", "acme/../x", "a b/c", "acme/x/y",
                                     "acme/-x", "acme/x--y", "hf.co/", "acme/" + "x" * 200])
def test_it_refuses_what_is_no_repo_name_with_a_message(written):
    with pytest.raises(HubError, match="not a Hugging Face repo name") as refused:
        hub.parse_reference(written)
    assert refused.value.status == 400


@pytest.mark.parametrize(("file_name", "quant", "bits"), [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M", 4),
    ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M", 4),
    ("SmolLM2-1.7B-Instruct.Q8_0.gguf", "Q8_0", 8),
    ("gemma-3-270m-it-UD-Q4_K_XL.gguf", "UD-Q4_K_XL", 4),
    ("Qwen3-30B-A3B-IQ2_XXS-00001-of-00002.gguf", "IQ2_XXS", 2),
    ("Q4_K_M/Qwen3-235B-Q4_K_M-00002-of-00003.gguf", "Q4_K_M", 4),
    ("model-bf16.gguf", "BF16", 16),
    ("qwen2-0.5b-instruct.fp16.gguf", "FP16", 16),
    ("gpt-oss-20b-MXFP4.gguf", "MXFP4", 4),
    ("tinyllama.gguf", "", None),
])
def test_it_reads_the_quantization_from_the_file_name(file_name, quant, bits):
    assert hub.quant_of(file_name) == quant
    assert hub.quant_bits(quant) == bits


def files(*pairs) -> list[RepoFile]:
    return [RepoFile(name, size) for name, size in pairs]


def test_it_defaults_to_q4_k_m():
    choices = hub.gguf_choices(files(("m-Q2_K.gguf", 10), ("m-Q4_K_M.gguf", 30), ("m-Q4_K_S.gguf", 28),
                                     ("m-Q8_0.gguf", 50)))
    assert hub.default_gguf(choices).name == "m-Q4_K_M.gguf"


def test_without_q4_k_m_it_takes_the_smallest_of_at_least_4_bits():
    choices = hub.gguf_choices(files(("m-IQ2_XXS.gguf", 5), ("m-Q3_K_M.gguf", 20), ("m-Q8_0.gguf", 50),
                                     ("m-Q5_K_M.gguf", 35), ("m-IQ4_XS.gguf", 25), ("m-F16.gguf", 90)))
    assert hub.default_gguf(choices).name == "m-IQ4_XS.gguf"
    assert hub.default_gguf(hub.gguf_choices(files(("m-Q2_K.gguf", 10), ("m-IQ1_S.gguf", 8)))).name == "m-IQ1_S.gguf"


def test_a_split_set_is_one_choice_of_all_its_parts_and_an_incomplete_one_is_none():
    choices = hub.gguf_choices(files(
        ("big-Q4_K_M-00002-of-00003.gguf", 40), ("big-Q4_K_M-00001-of-00003.gguf", 40),
        ("big-Q4_K_M-00003-of-00003.gguf", 20), ("big-Q8_0-00001-of-00002.gguf", 60),  # its second part is missing
        ("mmproj-big-F16.gguf", 5), ("README.md", 1), ("../evil-Q4_K_M.gguf", 1)))
    assert [c.to_dict() for c in choices] == [
        {"name": "big-Q4_K_M-00001-of-00003.gguf", "quant": "Q4_K_M", "size": 100, "parts": 3}]
    assert [p.name for p in choices[0].parts] == [f"big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_a_file_or_a_quantization_can_be_asked_for_and_what_is_missing_is_named():
    choices = hub.gguf_choices(files(("m-Q4_K_M.gguf", 30), ("m-UD-Q6_K_XL.gguf", 45), ("m-Q8_0.gguf", 50)))
    assert hub.pick_gguf(choices, quant="q8_0").name == "m-Q8_0.gguf"
    assert hub.pick_gguf(choices, quant="Q6_K_XL").name == "m-UD-Q6_K_XL.gguf"
    assert hub.pick_gguf(choices, file="m-Q8_0.gguf").name == "m-Q8_0.gguf"
    with pytest.raises(HubError, match=r"no Q2_K GGUF file\. Its quantizations: Q4_K_M, UD-Q6_K_XL, Q8_0"):
        hub.pick_gguf(choices, quant="Q2_K", repo="acme/m")
    with pytest.raises(HubError, match=r"no GGUF file 'nope.gguf'\. It has: m-Q4_K_M.gguf \(Q4_K_M\)"):
        hub.pick_gguf(choices, file="nope.gguf", repo="acme/m")


def listing(*names: str) -> hub.Listing:
    return hub.Listing("acme/m", "main", "c" * 40, tuple(RepoFile(name, 10) for name in names))


def test_a_safetensors_repo_gives_exactly_the_files_an_import_needs():
    plan = hub.plan(listing("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                            "model.safetensors.index.json", "README.md", ".gitattributes", "pytorch_model.bin",
                            "original/consolidated.00.pth", "onnx/model.onnx", "consolidated.safetensors",
                            "LICENSE"))
    assert plan.format == "hf-safetensors"
    assert [f.name for f in plan.files] == [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


@pytest.mark.parametrize(("names", "message"), [
    (("config.json", "tokenizer.json", "pytorch_model.bin"), "only pickled PyTorch weights"),
    (("README.md",), "neither GGUF files nor safetensors"),
    (("model.safetensors", "tokenizer.json"), "no config.json"),
])
def test_a_repo_without_loadable_weights_is_refused_with_what_to_do(names, message):
    with pytest.raises(HubError, match=message) as refused:
        hub.plan(listing(*names))
    assert refused.value.code == "no_weights"


def test_ollama_progress_says_each_step_once_in_ollama_s_shape():
    progress = PullProgress()
    files = [{"name": "a.gguf", "size": 100, "sha256": "ab" * 32}, {"name": "b.gguf", "size": 50, "sha256": ""}]
    state = {"status": "running", "phase": "resolving", "files": [], "bytes_done": 0}
    assert progress.lines(state) == [{"status": "pulling manifest"}]
    assert progress.lines(state) == []
    state.update(phase="downloading", files=files, current_file="a.gguf", bytes_done=40)
    assert progress.lines(state) == [{"status": "downloading a.gguf", "digest": "sha256:" + "ab" * 32, "total": 100,
                                      "completed": 40}]
    assert progress.lines(state) == []
    state.update(current_file="b.gguf", bytes_done=110)
    assert [(line["status"], line["completed"]) for line in progress.lines(state)] == [
        ("downloading a.gguf", 100), ("downloading b.gguf", 10)]
    state.update(status="succeeded", phase="", bytes_done=150)
    assert progress.lines(state) == [
        {"status": "downloading b.gguf", "digest": "", "total": 50, "completed": 50},
        {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


def test_ollama_progress_ends_a_failed_pull_with_its_message():
    progress = PullProgress()
    progress.lines({"status": "running", "phase": "resolving"})
    assert progress.lines({"status": "failed", "error_text": "acme/x is gated: ..."}) == [
        {"error": "acme/x is gated: ..."}]
