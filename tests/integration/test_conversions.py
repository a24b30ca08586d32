"""convert_model: a Hugging Face model of the library becomes GGUF or MLX, with progress, and joins the library."""

from __future__ import annotations

import importlib.util

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from inference.conversions import conversion_start, resume_orphaned_conversions
from inference.engine.base import GenerationRequest
from inference.engine.registry import backend_for
from inference.engine.sampling import SamplingParams
from inference.models import JobStatus, LocalModel, ModelConversion
from inference.services import model_import
from inference.specs import model_spec
from tests import factories
from tests.unit.batch_runs import run_one

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hf_model(tmp_path):
    return model_import(factories.build_tiny_hf_dir(tmp_path / "hf"), name="hf-tiny")


@pytest.fixture(autouse=True)
def models_dir(tmp_path):
    with override_settings(MODELS_DIR=tmp_path / "library"):
        yield tmp_path / "library"


def generate_tokens(model: LocalModel, count: int = 4) -> int:
    loaded = backend_for(model.backend or {"gguf": "llamacpp", "mlx": "mlx"}[model.format]).load(model_spec(model))
    try:
        request = GenerationRequest(prompt="hello", sampling=SamplingParams(temperature=0), max_tokens=count)
        return run_one(loaded, request).done["completion_tokens"]
    finally:
        loaded.close()


def test_it_converts_to_gguf_and_adds_the_result_to_the_library(hf_model, models_dir):
    call_command("convert_model", "hf-tiny", "--to", "gguf", "--type", "f32")
    conversion = ModelConversion.objects.get()
    assert conversion.status == JobStatus.SUCCEEDED and conversion.progress == 1.0
    result = LocalModel.objects.get(name="hf-tiny-f32")
    assert (result.format, result.architecture, result.quantization) == ("gguf", "llama", "F32")
    assert result.path.startswith(str(models_dir))
    assert generate_tokens(result) >= 1


@pytest.mark.skipif(importlib.util.find_spec("mlx") is None, reason="mlx is not installed")
def test_it_converts_to_4_bit_mlx(hf_model):
    call_command("convert_model", "hf-tiny", "--to", "mlx", "--bits", "4")
    result = LocalModel.objects.get(name="hf-tiny-mlx-4bit")
    assert result.format == "mlx"
    assert "4" in result.quantization


def test_it_refuses_to_convert_a_gguf_model(tmp_path):
    model_import(factories.build_tiny_gguf(tmp_path / "tiny.gguf"), name="tiny")
    with pytest.raises(CommandError, match="Hugging Face"):
        call_command("convert_model", "tiny", "--to", "gguf")
    assert not ModelConversion.objects.exists()


def test_it_refuses_an_unknown_model():
    with pytest.raises(CommandError, match="No model"):
        call_command("convert_model", "nope", "--to", "gguf")


def finished(conversion: ModelConversion, timeout: float = 60) -> ModelConversion:
    """The conversion once the embedded converter thread has done everything queued to it (waiting on the thread,
    not polling the row: the tests' in-memory SQLite refuses a write that meets a read instead of waiting)."""
    from inference.embedded import _converter

    _converter().submit(lambda: None).result(timeout)
    conversion.refresh_from_db()
    return conversion


def test_in_the_embedded_mode_a_conversion_runs_on_the_servers_converter_thread(hf_model):
    conversion = finished(conversion_start(hf_model, "gguf", gguf_type="f32"))
    assert conversion.status == JobStatus.SUCCEEDED
    assert conversion.worker.startswith("embedded@")
    assert LocalModel.objects.filter(name="hf-tiny-f32").exists()


def test_a_conversion_its_converter_died_running_starts_over_and_finishes(hf_model):
    conversion = conversion_start(hf_model, "gguf", gguf_type="f32", dispatch=False)
    ModelConversion.objects.filter(pk=conversion.pk).update(
        status=JobStatus.RUNNING, worker="converter@gone#dead00", progress=0.4)
    assert resume_orphaned_conversions("converter@here#11ve00") == 1
    assert finished(conversion).status == JobStatus.SUCCEEDED


def test_a_conversion_running_on_a_live_converter_is_left_to_it(hf_model):
    conversion = conversion_start(hf_model, "gguf", gguf_type="f32", dispatch=False)
    ModelConversion.objects.filter(pk=conversion.pk).update(status=JobStatus.RUNNING, worker="converter@here#11ve00")
    assert resume_orphaned_conversions("converter@here#11ve00") == 0
    conversion.refresh_from_db()
    assert (conversion.status, conversion.worker) == (JobStatus.RUNNING, "converter@here#11ve00")
