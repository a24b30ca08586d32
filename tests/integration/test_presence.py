"""Worker heartbeats, in-process and on real Redis: who is alive, and which models each holds in memory."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from inference.presence import CONVERTER, Heartbeat, Presence, get_presence


@pytest.fixture(params=["in-process", "redis"])
def presence(request, settings):
    settings.REDIS_URL = request.getfixturevalue("private_redis").url if request.param == "redis" else ""
    get_presence.cache_clear()
    yield get_presence()
    get_presence.cache_clear()


def test_a_beat_carries_the_models_a_worker_holds(presence):
    worker = f"w-{uuid.uuid4().hex[:8]}@test"
    presence.beat(worker, [("llamacpp", "/models/a.gguf"), ("torch", "/models/b")])
    assert worker in presence.live_workers()
    assert presence.loaded_models()[worker] == [("llamacpp", "/models/a.gguf"), ("torch", "/models/b")]
    presence.leave(worker)
    assert worker not in presence.live_workers() and worker not in presence.loaded_models()


def test_a_beat_from_an_older_worker_counts_as_alive_with_nothing_loaded(settings, private_redis):
    settings.REDIS_URL = private_redis.url
    worker = f"old-{uuid.uuid4().hex[:8]}@test"
    presence = Presence()
    redis.Redis.from_url(private_redis.url).set(presence.key_prefix + worker, str(time.time()), ex=30)
    assert worker in presence.live_workers() and presence.loaded_models()[worker] == []
    presence.leave(worker)


def test_a_converter_is_alive_as_a_converter_and_never_counts_as_a_generation_worker(settings, private_redis):
    settings.REDIS_URL = private_redis.url
    get_presence.cache_clear()
    converter = f"converter-{uuid.uuid4().hex[:8]}@test"
    beat = Heartbeat(converter, lambda: [], role=CONVERTER)
    beat.start()
    try:
        assert converter in get_presence(CONVERTER).live_workers()
        assert converter not in get_presence().live_workers()
    finally:
        beat.stop()
        get_presence.cache_clear()
    assert converter not in Presence(CONVERTER).live_workers()


def test_the_heartbeat_beats_at_once_when_the_loaded_models_change(presence, settings):
    settings.HEARTH_WORKER_HEARTBEAT_SECONDS = 30  # a periodic beat would come far too late
    loaded: list[tuple[str, str]] = []
    worker = f"w-{uuid.uuid4().hex[:8]}@test"
    beat = Heartbeat(worker, loaded=lambda: list(loaded))
    beat.start()
    try:
        assert presence.loaded_models()[worker] == []
        loaded.append(("llamacpp", "/models/tiny.gguf"))
        deadline = time.monotonic() + 3
        while presence.loaded_models()[worker] == [] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert presence.loaded_models()[worker] == [("llamacpp", "/models/tiny.gguf")]
    finally:
        beat.stop()
    assert worker not in presence.live_workers()


@pytest.mark.django_db
def test_the_library_page_reads_each_models_load_state_from_the_beats(client, settings):
    from django.contrib.auth import get_user_model

    from inference.models import GenerationJob, JobStatus, LocalModel

    settings.REDIS_URL = ""
    get_presence.cache_clear()
    user = get_user_model().objects.create_user("member", password="pw-member-123")
    client.force_login(user)
    LocalModel.objects.create(name="idle", path="/models/idle.gguf", format="gguf")
    busy = LocalModel.objects.create(name="busy", path="/models/busy.gguf", format="gguf")
    warm = LocalModel.objects.create(name="warm", path="/models/warm", format="hf-safetensors")
    GenerationJob.objects.create(model=busy, model_name="busy", owner=user, status=JobStatus.RUNNING)

    def states() -> dict[str, str]:
        import re

        page = client.get("/models/").content.decode()
        rows = re.findall(r'<tr data-model="([^"]+)">.*?<td class="load-state"[^>]*>(.*?)</td>', page, flags=re.S)
        return {name: " ".join(re.sub(r"<[^>]+>", " ", cell).split()) for name, cell in rows}

    assert states() == {"idle": "not loaded", "busy": "loading", "warm": "not loaded"}
    get_presence().beat("w1@test", [("torch", warm.path), ("llamacpp", busy.path)])
    get_presence().beat("w2@test", [("llamacpp", warm.path)])
    try:
        assert states() == {"idle": "not loaded", "busy": "loaded (llamacpp) generating",
                            "warm": "loaded (llamacpp, torch)"}
    finally:
        get_presence().leave("w1@test")
        get_presence().leave("w2@test")
    assert states()["warm"] == "not loaded"
    from inference.selection import converted_path

    get_presence().beat("w3@test", [("llamacpp", str(converted_path(warm)))])  # running as its GGUF twin
    try:
        assert states()["warm"] == "loaded (llamacpp)"
    finally:
        get_presence().leave("w3@test")
    get_presence.cache_clear()
