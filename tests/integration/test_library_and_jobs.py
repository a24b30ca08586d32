"""The model library, API keys and job admission, on the Django test database."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings

from api.models import ApiKey
from inference.engine.base import GenerationRequest, ModelRefused
from inference.models import GenerationJob, JobStatus
from inference.presence import get_presence
from inference.services import model_import
from inference.specs import effective_context, model_spec
from tests import factories
from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner():
    return get_user_model().objects.create_user("owner", password="owner-password")


@pytest.fixture
def tiny(tmp_path):
    return model_import(factories.build_tiny_gguf(tmp_path / "tiny.gguf"), name="tiny")


@pytest.fixture
def live_worker():
    get_presence().beat("test-worker@here")
    yield
    get_presence().leave("test-worker@here")


def test_it_records_what_the_file_says(tiny):
    assert tiny.format == "gguf"
    assert tiny.architecture == "llama"
    assert tiny.quantization == "F32"
    assert tiny.context_length == 512
    assert tiny.parameter_count == factories.tiny_gguf_parameter_count()
    assert tiny.chat_template_source == "gguf" and tiny.has_chat_template
    assert tiny.size_bytes > 0


def test_it_imports_a_hugging_face_directory_for_the_torch_engine(tmp_path):
    model = model_import(factories.build_tiny_hf_dir(tmp_path / "hf"), name="hf-tiny")
    assert model.format == "hf-safetensors"
    assert model.architecture == "llama"


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda p: factories.write_pickle_checkpoint(p / "model.bin"), "unpickle"),
        (lambda p: factories.write_truncated_gguf(p / "cut.gguf"), "truncated"),
        (lambda p: factories.write_gguf_with_version(p / "v9.gguf", 9), "version"),
        (lambda p: factories.write_gguf_with_absurd_counts(p / "huge.gguf"), "tensor"),
    ],
)
def test_it_refuses_files_that_fail_validation(tmp_path, write, words):
    path = write(tmp_path)
    with pytest.raises(ModelRefused) as refused:
        model_import(path)
    assert words in refused.value.message.lower()


def test_it_refuses_a_second_model_with_the_same_id(tiny, tmp_path):
    with pytest.raises(ModelRefused, match="already"):
        model_import(factories.build_tiny_gguf(tmp_path / "other.gguf"), name="tiny")


def test_it_caps_the_context_at_hearth_max_ctx_and_passes_gpu_layers(tiny):
    with override_settings(HEARTH_MAX_CTX=256, HEARTH_N_GPU_LAYERS=12):
        spec = model_spec(tiny)
    assert (spec.n_ctx, spec.n_gpu_layers) == (256, 12)


def test_each_slot_gets_an_equal_share_of_the_kv_cells_as_its_context(tiny):
    with override_settings(HEARTH_MAX_CTX=256, HEARTH_WORKER_SLOTS=4, HEARTH_KV_TOKENS=512):
        spec = model_spec(tiny)
        assert effective_context(tiny) == 128
    assert (spec.n_ctx, spec.n_slots, spec.kv_tokens) == (128, 4, 512)
    with override_settings(HEARTH_MAX_CTX=256, HEARTH_WORKER_SLOTS=4, HEARTH_KV_TOKENS=0):
        assert model_spec(tiny).n_ctx == 256  # by default a whole context per slot, up to 32,768 cells in all


def test_it_stores_api_keys_hashed_and_finds_them_by_prefix(owner):
    key, text = ApiKey.objects.issue(owner)
    assert text.startswith(f"hth_{key.prefix}_")
    assert text.split("_", 2)[2] not in key.secret_hash
    assert ApiKey.objects.authenticate(text) == key
    assert ApiKey.objects.authenticate(text[:-1] + ("A" if text[-1] != "A" else "B")) is None


def test_it_stops_accepting_keys_of_a_deactivated_user(owner):
    _key, text = ApiKey.objects.issue(owner)
    owner.is_active = False
    owner.save()
    assert ApiKey.objects.authenticate(text) is None


async def _post_chat(text_key: str, model: str = "tiny"):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return await AsyncClient().post("/v1/chat/completions", data=json.dumps(body), content_type="application/json",
                                    headers={"Authorization": f"Bearer {text_key}"})


def test_it_answers_503_when_no_worker_is_alive(owner, tiny):
    _key, text = ApiKey.objects.issue(owner)
    import asyncio

    response = asyncio.run(_post_chat(text))
    assert response.status_code == 503
    assert "worker" in response.json()["error"]["message"]
    assert not GenerationJob.objects.exists()


def test_it_answers_429_with_retry_after_when_the_queue_is_full(owner, tiny, live_worker):
    _key, text = ApiKey.objects.issue(owner)
    request = {"messages": [{"role": "user", "content": "x"}]}
    for _ in range(2):
        GenerationJob.objects.create(owner=owner, model=tiny, model_name="tiny", request=request)
    import asyncio

    with override_settings(HEARTH_MAX_QUEUED=2):
        response = asyncio.run(_post_chat(text))
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "queue_full"
    assert GenerationJob.objects.filter(status=JobStatus.QUEUED).count() == 2


@pytest.mark.django_db(transaction=False)
def test_it_writes_a_queued_job_row_with_the_request(owner, tiny, live_worker, django_capture_on_commit_callbacks):
    from inference.services import generation_start

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = generation_start(owner=owner, model=tiny, request=GenerationRequest(prompt="hello", max_tokens=3))
    assert job.status == JobStatus.QUEUED
    assert job.request["prompt"] == "hello" and job.request["max_tokens"] == 3
    assert len(callbacks) == 1  # the task is sent once the row is committed


def _manage(*args, env=None):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)


def test_create_api_key_prints_the_key_alone(tmp_path):
    import os

    env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path)}
    _manage("migrate", "-v0", env=env)
    _manage("shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('ann')", env=env)
    result = _manage("create_api_key", "ann", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("hth_")
    assert _manage("create_api_key", "nobody", env=env).returncode != 0


def test_import_model_explains_a_refusal(tmp_path):
    import os

    env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path)}
    _manage("migrate", "-v0", env=env)
    result = _manage("import_model", str(factories.write_pickle_checkpoint(tmp_path / "weights.pt")), env=env)
    assert result.returncode != 0
    assert "safetensors" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"HEARTH_REDIS_URL": "redis://127.0.0.1:6379/0"}, "HEARTH_SECRET_KEY"),
        ({"HEARTH_REDIS_URL": "redis://127.0.0.1:6379/0", "HEARTH_SECRET_KEY": "x" * 50, "HEARTH_DEBUG": "1"},
         "DEBUG"),
        ({"HEARTH_MAX_CTX": "lots"}, "HEARTH_MAX_CTX"),
        ({"HEARTH_DEBUG": "maybe"}, "HEARTH_DEBUG"),
    ],
)
def test_it_refuses_to_start_with_unsafe_or_invalid_settings(tmp_path, overrides, words):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update(HEARTH_DATA_DIR=str(tmp_path), **overrides)
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert words in result.stderr
