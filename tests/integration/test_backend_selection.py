"""Backend choice and fallback chains through the API: each fallback is real, recorded and explained.

Every arrow of the default chains is made to fail for real: an architecture the torch engine lacks (its alias
table refuses OLMo), llama.cpp or mlx not installed (a server whose PYTHONPATH shadows them with packages
that raise ImportError, which is how a missing package looks), a memory budget smaller than the weights, and a
backend that cannot honour the request (logprobs on torch).
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3

import openai
import pytest

from tests import servers
from tests.conftest import openai_client
from tests.factories import build_tiny_hf_dir
from tests.integration.chat_client import login
from tests.unit.olmo_models import build_tiny_olmo_dir


def chat(server, model, **extra):
    return openai_client(server).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0, **extra)


def refused(server, model, **extra) -> dict:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, model, **extra)
    assert caught.value.status_code == 503, caught.value.body
    assert caught.value.body["code"] == "no_backend_available"
    return caught.value.body


def last_job(server, model):
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as db:
        backend, fallbacks, status = db.execute(
            "SELECT backend, fallbacks, status FROM inference_generationjob WHERE model_name = ? "
            "ORDER BY created_at DESC LIMIT 1", (model,)).fetchone()
    return backend, json.loads(fallbacks), status


def steps(fallbacks):
    return [(step["backend"], step["step"]) for step in fallbacks]


_OLMO_IMPORTED: set[int] = set()  # the ports of the servers whose library has olmo-tiny


def import_olmo(server, tmp_path, name="olmo-tiny") -> str:
    if server.port not in _OLMO_IMPORTED:
        server.manage("import_model", str(build_tiny_olmo_dir(tmp_path / name)), "--name", name)
        _OLMO_IMPORTED.add(server.port)
    return name


# --- the selection order --------------------------------------------------------------------------------


def test_the_request_choice_wins_over_the_format(embedded_server):
    response = chat(embedded_server, "tiny", extra_body={"backend": "torch"})
    assert response.headers["x-hearth-backend"] == "torch"
    assert "x-hearth-fallback" not in response.headers


def test_the_format_native_backend_serves_when_nothing_is_chosen(embedded_server):
    assert chat(embedded_server, "tiny").headers["x-hearth-backend"] == "llamacpp"
    assert chat(embedded_server, "hf-tiny").headers["x-hearth-backend"] == "torch"


def test_the_model_setting_wins_over_the_format_and_the_request_over_the_setting(embedded_server):
    setting = "mlx" if importlib.util.find_spec("mlx") else "torch"  # without mlx, its chain's torch
    assert chat(embedded_server, "hf-mlx").headers["x-hearth-backend"] == setting
    assert chat(embedded_server, "hf-mlx", extra_body={"backend": "torch"}).headers["x-hearth-backend"] == "torch"


def test_an_unknown_backend_name_is_a_clear_error(embedded_server):
    with pytest.raises(openai.APIStatusError) as caught:
        chat(embedded_server, "tiny", extra_body={"backend": "tensorrt"})
    assert "tensorrt" in caught.value.body["message"]


# --- the chains, each arrow failing for real -------------------------------------------------------------


def test_mlx_that_cannot_load_the_model_falls_back_to_torch(embedded_server):
    response = chat(embedded_server, "tiny", extra_body={"backend": "mlx"})  # mlx cannot read a GGUF file
    assert response.headers["x-hearth-backend"] == "torch"
    assert response.headers["x-hearth-fallback"].startswith("mlx: ")
    assert response.parse().usage.completion_tokens == 3
    backend, fallbacks, status = last_job(embedded_server, "tiny")
    assert (backend, status) == ("torch", "succeeded")
    assert steps(fallbacks) == [("mlx", "failed")]


def test_an_hf_architecture_the_torch_engine_lacks_is_converted_once_and_runs_on_llamacpp(embedded_server, tmp_path):
    name = import_olmo(embedded_server, tmp_path)
    first = chat(embedded_server, name)
    assert first.headers["x-hearth-backend"] == "llamacpp"
    assert first.headers["x-hearth-fallback"].startswith("torch: The torch engine does not support model_type 'olmo'")
    assert "llamacpp: converted from Hugging Face safetensors to GGUF (f16)" in first.headers["x-hearth-fallback"]
    assert first.parse().usage.completion_tokens == 3
    backend, fallbacks, status = last_job(embedded_server, name)
    assert (backend, status) == ("llamacpp", "succeeded")
    assert steps(fallbacks) == [("torch", "failed"), ("llamacpp", "converted")]

    again = chat(embedded_server, name)
    assert "converted from this Hugging Face model by an earlier job" in again.headers["x-hearth-fallback"]
    assert len(list((embedded_server.data_dir / "models" / "converted").glob("*-olmo-tiny-f16.gguf"))) == 1


def test_a_gguf_architecture_the_torch_engine_lacks_falls_back_to_llamacpp(embedded_server, tmp_path):
    from inference.engine.convert import convert_hf_to_gguf

    gguf = convert_hf_to_gguf(build_tiny_olmo_dir(tmp_path / "olmo"), tmp_path / "olmo.gguf", "f32")
    embedded_server.manage("import_model", str(gguf), "--name", "olmo-gguf")
    response = chat(embedded_server, "olmo-gguf", extra_body={"backend": "torch"})
    assert response.headers["x-hearth-backend"] == "llamacpp"
    assert response.headers["x-hearth-fallback"].startswith("torch: The torch engine cannot run GGUF architecture 'olmo'")
    assert steps(last_job(embedded_server, "olmo-gguf")[1]) == [("torch", "failed")]


def test_a_backend_that_cannot_honour_the_request_is_skipped(embedded_server):
    response = chat(embedded_server, "hf-tiny", logprobs=True, top_logprobs=2)
    assert response.headers["x-hearth-backend"] == "llamacpp"
    assert response.headers["x-hearth-fallback"].startswith("torch: skipped: cannot do logprobs")
    content = response.parse().choices[0].logprobs.content
    assert len(content) == 3 and all(len(entry.top_logprobs) == 2 for entry in content)
    assert steps(last_job(embedded_server, "hf-tiny")[1]) == [("torch", "skipped"), ("llamacpp", "converted")]


def test_embeddings_of_an_hf_model_skip_torch_and_come_from_llamacpp(embedded_server):
    result = openai_client(embedded_server).embeddings.create(model="hf-tiny", input=["hello", "world"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 64
    backend, fallbacks, status = last_job(embedded_server, "hf-tiny")
    assert (backend, status) == ("llamacpp", "succeeded")
    assert fallbacks[0]["backend"] == "torch" and fallbacks[0]["reason"] == "skipped: cannot do embeddings"


def test_when_no_backend_can_serve_the_503_names_each_why_and_what_to_do(embedded_server, tmp_path):
    directory = build_tiny_hf_dir(tmp_path / "mamba")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    embedded_server.manage("import_model", str(directory), "--name", "mamba-tiny")
    message = refused(embedded_server, "mamba-tiny")["message"]
    assert "Tried torch, llamacpp." in message
    assert "torch: The torch engine does not support model_type 'mamba'" in message
    assert "llamacpp: llama.cpp runs GGUF files and this model cannot be converted" in message
    assert message.count("to fix:") == 2
    assert last_job(embedded_server, "mamba-tiny")[2] == "failed"


# --- the pages -----------------------------------------------------------------------------------------


def test_the_jobs_page_shows_each_jobs_backend_and_its_fallback_steps(embedded_server, tmp_path):
    chat(embedded_server, import_olmo(embedded_server, tmp_path))
    html = login(embedded_server).get("/jobs/").text
    assert "torch: The torch engine does not support model_type &#x27;olmo&#x27;" in html
    assert "<li>llamacpp: " in html and "GGUF (f16)" in html  # converted now, or by an earlier job


def test_the_model_page_shows_the_capability_matrix_and_the_chain(embedded_server):
    html = login(embedded_server).get("/models/hf-tiny/").text
    assert 'id="backend-matrix"' in html
    for backend in ("llamacpp", "torch", "mlx"):
        assert f'data-backend="{backend}"' in html
    assert "after conversion to GGUF" in html  # llama.cpp runs an HF model once converted
    assert "<th>Batching</th>" in html  # every backend decodes its slots together
    assert "<strong>torch</strong> → <strong>llamacpp</strong>" in html


# --- servers where a backend is missing or the memory budget is small ----------------------------------


@pytest.fixture(scope="module")
def server_without_llamacpp_or_mlx(tmp_path_factory, tiny_gguf, tiny_hf):
    """llama_cpp and mlx shadowed by packages whose import fails, as on a machine that lacks them; the server's
    default backend is llamacpp (for a GGUF the same as the format's native one)."""
    data_dir = tmp_path_factory.mktemp("missing-backends")
    shim = data_dir / "shim"
    for package in ("llama_cpp", "mlx"):
        (shim / package).mkdir(parents=True)
        (shim / package / "__init__.py").write_text(f"raise ImportError({f'No module named {package!r}'!r})\n")
    server = servers.start_embedded(data_dir / "server", {"tiny": tiny_gguf, "hf-tiny": tiny_hf},
                                    PYTHONPATH=str(shim), HEARTH_DEFAULT_BACKEND="llamacpp")
    yield server
    server.stop()


def test_a_gguf_model_runs_on_torch_when_llamacpp_is_not_installed(server_without_llamacpp_or_mlx):
    response = chat(server_without_llamacpp_or_mlx, "tiny")
    assert response.headers["x-hearth-backend"] == "torch"
    assert response.headers["x-hearth-fallback"].startswith(
        "llamacpp: not available here: llama-cpp-python is not installed")
    assert response.parse().usage.completion_tokens == 3


def test_an_mlx_choice_runs_on_torch_when_mlx_is_not_installed(server_without_llamacpp_or_mlx):
    response = chat(server_without_llamacpp_or_mlx, "hf-tiny", extra_body={"backend": "mlx"})
    assert response.headers["x-hearth-backend"] == "torch"
    assert "mlx: not available here: mlx is not installed: pip install 'hearth[mlx]'" in (
        response.headers["x-hearth-fallback"])


def test_the_server_default_comes_before_the_format_and_after_the_request(server_without_llamacpp_or_mlx):
    response = chat(server_without_llamacpp_or_mlx, "hf-tiny")  # the format says torch, the server llamacpp
    assert response.headers["x-hearth-backend"] == "torch"
    assert response.headers["x-hearth-fallback"].startswith("llamacpp: not available here")
    response = chat(server_without_llamacpp_or_mlx, "hf-tiny", extra_body={"backend": "torch"})
    assert response.headers["x-hearth-backend"] == "torch"
    assert "x-hearth-fallback" not in response.headers


def test_the_503_says_how_to_install_and_how_to_convert(server_without_llamacpp_or_mlx, tmp_path):
    message = refused(server_without_llamacpp_or_mlx, import_olmo(server_without_llamacpp_or_mlx, tmp_path))["message"]
    assert "python manage.py convert_model olmo-tiny --to gguf" in message
    assert "pip install llama-cpp-python" in message


@pytest.fixture(scope="module")
def server_with_small_budget(tmp_path_factory, tiny_gguf, tiny_hf):
    """400 KiB: hf-tiny's 147,520 parameters take 590 KB in torch's f32 but 295 KB as an f16 GGUF;
    the f32 tiny GGUF (566 KB) fits neither backend."""
    server = servers.start_embedded(tmp_path_factory.mktemp("small-budget"), {"tiny": tiny_gguf, "hf-tiny": tiny_hf},
                                    HEARTH_MODEL_MEMORY_BUDGET="400K")
    yield server
    server.stop()


def test_a_model_over_the_budget_on_torch_is_converted_to_f16_and_runs_on_llamacpp(server_with_small_budget):
    response = chat(server_with_small_budget, "hf-tiny")
    assert response.headers["x-hearth-backend"] == "llamacpp"
    assert response.headers["x-hearth-fallback"].startswith(
        "torch: needs about 576.2 KiB for its weights, over the memory budget of 400.0 KiB")
    assert steps(last_job(server_with_small_budget, "hf-tiny")[1]) == [("torch", "failed"), ("llamacpp", "converted")]


def test_a_model_over_the_budget_everywhere_is_refused_before_loading(server_with_small_budget):
    message = refused(server_with_small_budget, "tiny")["message"]
    assert "llamacpp: needs about 552.5 KiB for its weights, over the memory budget of 400.0 KiB" in message
    assert "torch: needs about 539.8 KiB" in message
    assert "use a smaller quantization of the model (a Q4_K_M GGUF" in message
