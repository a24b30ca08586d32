"""Pulling models from the Hugging Face Hub (`manage.py pull_model`, inference/pulls.py): the real huggingface_hub
client against the tests' stand-in hub (tests/hub_standin.py, HF_ENDPOINT), tiny real GGUF and safetensors repos,
and the library page's form, list and progress (Django's test client)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from inference import pulls
from inference.engine.base import GenerationRequest
from inference.engine.registry import backend_for
from inference.engine.sampling import SamplingParams
from inference.models import LocalModel, ModelPull
from inference.specs import model_spec
from tests.factories import tiny_gguf_parameter_count
from tests.unit.batch_runs import run_one

pytestmark = pytest.mark.django_db
Q4_SIZE = 4189952  # tiny-Q4_K_M.gguf of acme/Tiny-GGUF: five 1 MiB chunks
MiB = 1024 * 1024


@pytest.fixture
def repos(hub):
    return hub.tiny


@pytest.fixture(autouse=True)
def library(hub, monkeypatch, settings, tmp_path):
    """HF_ENDPOINT at the stand-in, no token, online; a library folder of the test's own; quick retries."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings.MODELS_DIR = tmp_path / "library"
    settings.HEARTH_PULL_RETRIES = 1
    settings.HEARTH_PULL_BACKOFF_SECONDS = 0.05
    hub.requests.clear()
    hub.outage = False
    hub.lies.clear()
    yield settings.MODELS_DIR


def pull(*args: str) -> str:
    out = io.StringIO()
    call_command("pull_model", *args, stdout=out)
    return out.getvalue()


def fetched(hub) -> list[tuple[str, str]]:
    """(file, Range) of every GET of a file, in order."""
    return [(seen.path.split("/resolve/", 1)[1].split("/", 1)[1], seen.range) for seen in hub.fetched()]


def generated_tokens(model: LocalModel, count: int = 3) -> int:
    loaded = backend_for("llamacpp").load(model_spec(model))
    try:
        request = GenerationRequest(prompt="hello", sampling=SamplingParams(temperature=0), max_tokens=count)
        return run_one(loaded, request).done["completion_tokens"]
    finally:
        loaded.close()


# --- what a pull takes ---------------------------------------------------------------------------------------


def test_it_pulls_q4_k_m_from_a_gguf_repo_with_progress_and_records_where_it_came_from(hub, repos, library):
    output = pull(repos.gguf)
    model = LocalModel.objects.get()
    assert (model.name, model.format, model.quantization) == ("tiny-q4_k_m", "gguf", "Q4_K_M")
    assert Path(model.path) == library / "tiny-q4_k_m.gguf"
    assert Path(model.path).read_bytes() == repos.files["Q4_K_M"]
    commit = hub.repos[repos.gguf].refs["main"]
    assert model.provenance == {
        "source": "huggingface", "repo": repos.gguf, "revision": "main", "commit": commit,
        "files": [{"name": "tiny-Q4_K_M.gguf", "size": Q4_SIZE,
                   "sha256": hashlib.sha256(repos.files["Q4_K_M"]).hexdigest()}],
        "quant": "Q4_K_M", "pulled_at": model.provenance["pulled_at"]}
    assert fetched(hub) == [("tiny-Q4_K_M.gguf", "")]  # nothing else: no README, no projector
    job = ModelPull.objects.get()
    assert (job.status, job.bytes_done, job.bytes_total, job.commit) == ("succeeded", Q4_SIZE, Q4_SIZE, commit)
    assert "of 4.0 MB" in output and "Added tiny-q4_k_m to the library" in output
    assert not any((library / ".pulls").iterdir())  # the staging folder is gone


@pytest.mark.parametrize(("arguments", "file"), [
    (["--quant", "q8_0"], "tiny-Q8_0.gguf"),
    (["--file", "tiny-Q2_K.gguf"], "tiny-Q2_K.gguf"),
    ([":Q2_K"], "tiny-Q2_K.gguf"),  # hf.co/owner/name:TAG, as Ollama writes it
])
def test_a_quantization_or_a_file_can_be_asked_for(hub, repos, arguments, file):
    if arguments[0].startswith(":"):
        pull(f"hf.co/{repos.gguf}{arguments[0]}")
    else:
        pull(repos.gguf, *arguments)
    assert LocalModel.objects.get().provenance["files"][0]["name"] == file
    assert fetched(hub) == [(file, "")]


def test_without_q4_k_m_it_takes_the_smallest_file_of_at_least_4_bits(hub, repos):
    pull(repos.no_q4_k_m)
    model = LocalModel.objects.get()
    assert (model.name, model.quantization) == ("tiny-q5_k_m", "Q5_K_M")


def test_it_lists_a_repos_gguf_models_with_sizes_and_quantizations(repos):
    listed = pulls.repo_files(repos.gguf)
    assert listed["format"] == "gguf"
    assert [(f["name"], f["quant"], f["default"]) for f in listed["files"]] == [
        ("tiny-Q2_K.gguf", "Q2_K", False), ("tiny-Q8_0.gguf", "Q8_0", False),
        ("tiny-Q4_K_M.gguf", "Q4_K_M", True)]
    assert listed["files"][2]["size"] == Q4_SIZE
    split = pulls.repo_files(repos.split)["files"]
    assert [(f["name"], f["parts"]) for f in split] == [("tiny-Q4_K_M-00001-of-00003.gguf", 3)]
    hf = pulls.repo_files(repos.hf)
    assert hf["format"] == "hf-safetensors" and "pytorch_model.bin" not in {f["name"] for f in hf["files"]}


def test_a_split_gguf_lands_side_by_side_and_llama_cpp_loads_it_from_its_first_part(hub, repos, library):
    pull(repos.split)
    model = LocalModel.objects.get()
    folder = library / "tiny-q4_k_m"
    parts = [f"tiny-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert Path(model.path) == folder / parts[0]
    assert sorted(p.name for p in folder.iterdir()) == parts
    assert model.parameter_count == tiny_gguf_parameter_count()  # every part counted
    assert model.size_bytes == sum((folder / name).stat().st_size for name in parts)
    assert [name for name, _ in fetched(hub)] == parts
    assert generated_tokens(model) >= 1
    from webui.uploads import model_delete

    model_delete(model)
    assert not folder.exists()  # deleting the model takes every part


def test_a_safetensors_repo_brings_exactly_the_files_an_import_needs(hub, repos, library):
    pull(repos.hf)
    model = LocalModel.objects.get()
    wanted = {name.removeprefix("hf/") for name in repos.files if name.startswith("hf/")}
    assert (model.name, model.format) == ("tiny-hf", "hf-safetensors")
    assert {p.name for p in (library / "tiny-hf").iterdir()} == wanted
    assert {name for name, _ in fetched(hub)} == wanted  # never the pickles, the README or original/


# --- what goes wrong, and says so --------------------------------------------------------------------------


def test_a_repo_with_only_pickled_weights_is_refused_before_a_byte(hub, repos):
    with pytest.raises(CommandError, match="only pickled PyTorch weights.*never loads"):
        pull(repos.pickles)
    assert hub.fetched("GET") == [] and hub.fetched("HEAD") == []
    assert ModelPull.objects.get().error_code == "no_weights"
    assert not LocalModel.objects.exists()


def test_it_resumes_after_the_hub_drops_the_connection_mid_file(hub, repos):
    hub.drop_once("tiny-Q4_K_M.gguf", 1_500_000)
    pull(repos.gguf)
    assert fetched(hub) == [("tiny-Q4_K_M.gguf", ""), ("tiny-Q4_K_M.gguf", f"bytes={MiB}-")]
    assert Path(LocalModel.objects.get().path).read_bytes() == repos.files["Q4_K_M"]


def test_a_pull_that_failed_on_the_network_resumes_where_it_stopped_when_pulled_again(hub, repos, library):
    hub.drop_once("tiny-Q4_K_M.gguf", 1_500_000, then_outage=True)
    with pytest.raises(CommandError, match="pull again: the bytes already fetched are kept|pull again later"):
        pull(repos.gguf)
    failed = ModelPull.objects.get()
    assert (failed.status, failed.error_code) == ("failed", "network")
    partial = next((library / ".pulls").rglob("*.part"))
    assert partial.stat().st_size == MiB
    hub.outage = False
    hub.requests.clear()
    pull(repos.gguf)
    assert fetched(hub) == [("tiny-Q4_K_M.gguf", f"bytes={MiB}-")]
    assert Path(LocalModel.objects.get().path).read_bytes() == repos.files["Q4_K_M"]


def test_a_file_that_does_not_match_the_hubs_sha256_is_refused_and_removed(hub, repos, library):
    hub.lie_about("tiny-Q4_K_M.gguf")
    with pytest.raises(CommandError, match="does not match the hub's sha256 digest"):
        pull(repos.gguf)
    assert len(fetched(hub)) == 2  # fetched again once, from its first byte, before giving up
    assert ModelPull.objects.get().error_code == "checksum"
    assert not LocalModel.objects.exists()
    assert not list(library.rglob("*.gguf")) and not list(library.rglob("*.part"))


def test_it_refuses_a_pull_the_disk_has_no_room_for_before_fetching_a_byte(hub, repos, settings):
    settings.HEARTH_PULL_RESERVE_BYTES = 1 << 60
    with pytest.raises(CommandError, match="Not enough disk space.*Delete models you no longer use"):
        pull(repos.gguf)
    assert hub.fetched("GET") == [] and hub.fetched("HEAD") == []
    assert ModelPull.objects.get().error_code == "disk_space"


def test_a_gated_repo_says_to_accept_its_conditions_and_set_hf_token(hub, repos, monkeypatch):
    with pytest.raises(CommandError, match=r"is gated: accept its conditions on .*set HF_TOKEN"):
        pull(repos.gated)
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    with pytest.raises(CommandError, match="has not been granted access"):
        pull(repos.gated)
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    pull(repos.gated)
    assert LocalModel.objects.get().provenance["repo"] == repos.gated
    assert {seen.authorization for seen in hub.fetched()} == {"Bearer hf_granted"}


@pytest.mark.parametrize(("arguments", "message"), [
    (["acme/nothing-here"], "There is no repo acme/nothing-here .*if it is private, set HF_TOKEN"),
    (["acme/Tiny-GGUF", "--quant", "Q6_K"], r"has no Q6_K GGUF file\. Its quantizations: Q2_K, Q8_0, Q4_K_M"),
    (["acme/Tiny-GGUF", "--file", "tiny-F16.gguf"], r"has no GGUF file 'tiny-F16.gguf'\. It has: tiny-Q2_K.gguf"),
    (["acme/Tiny-GGUF", "--revision", "v9"], "has no revision 'v9'"),
    (["acme/tiny-hf", "--quant", "Q4_K_M"], "has no GGUF files, so --file and --quant do not apply"),
])
def test_what_the_hub_lacks_is_named(hub, arguments, message):
    with pytest.raises(CommandError, match=message):
        pull(*arguments)
    assert hub.fetched("GET") == []


@pytest.mark.parametrize(("arguments", "message"), [
    (["llama3.2"], "not a Hugging Face repo name: write it as on the hub, owner/name"),
    (["../../etc/passwd"], "not a Hugging Face repo name"),
    (["acme/Tiny-GGUF", "--name", "no spaces please"], "not a valid model id"),
    (["acme/Tiny-GGUF", "--file", "weights.bin"], "is not a GGUF file name"),
    (["acme/Tiny-GGUF", "--quant", "Q4 K M"], "is not a quantization"),
    (["acme/Tiny-GGUF", "--revision", "../main"], "is not a revision"),
])
def test_bad_input_is_refused_with_a_message_and_queues_nothing(arguments, message):
    with pytest.raises(CommandError, match=message):
        pull(*arguments)
    assert not ModelPull.objects.exists()


def test_a_name_the_library_has_is_refused(repos, tiny_gguf):
    call_command("import_model", str(tiny_gguf), "--name", "taken", stdout=io.StringIO())
    with pytest.raises(CommandError, match="already has 'taken'"):
        pull(repos.gguf, "--name", "taken")


def test_offline_mode_refuses_to_pull(repos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match="HF_HUB_OFFLINE is set.*import_model"):
        pull(repos.gguf)


# --- cancel, restart, update -------------------------------------------------------------------------------


def test_a_running_pull_cancelled_stops_at_once_and_leaves_nothing_behind(hub, repos, library):
    """Cancelled while its download waits on a stalled connection (the hub holds the file after 2.5 MB)."""
    job = pulls.pull_start(repos.gguf, dispatch=False)
    hub.hold("tiny-Q4_K_M.gguf", 2_500_000)
    seen = []

    def cancel_once_bytes_stall(snapshot: pulls.Snapshot) -> None:
        seen.append(snapshot.bytes_done)
        if snapshot.bytes_done >= 2 * MiB:
            pulls.pull_cancel(ModelPull.objects.get(pk=job.pk))

    try:
        done = pulls.pull_run(job.pk, on_progress=cancel_once_bytes_stall)
    finally:
        hub.release("tiny-Q4_K_M.gguf")
    assert done.status == "cancelled" and done.finished_at is not None and seen[-1] == 2 * MiB
    assert not LocalModel.objects.exists()
    assert list(library.rglob("*")) == [library / ".pulls"]  # nothing fetched is left


def test_a_queued_pull_cancelled_never_starts(hub, repos):
    job = pulls.pull_start(repos.gguf, dispatch=False)
    assert pulls.pull_cancel(job)
    assert pulls.pull_run(job.pk).status == "cancelled"
    assert hub.requests == []


class Killed(BaseException):
    """What a killed puller looks like from inside: it stops between two chunks, its row still running."""


@pytest.mark.django_db(transaction=True)
def test_a_pull_its_puller_died_running_resumes_from_its_bytes_on_the_next_puller(hub, repos, library):
    job = pulls.pull_start(repos.gguf, dispatch=False)
    hub.hold("tiny-Q4_K_M.gguf", 2_500_000)

    def die(snapshot: pulls.Snapshot) -> None:
        if snapshot.bytes_done >= 2 * MiB:
            raise Killed

    with pytest.raises(Killed):
        pulls.pull_run(job.pk, "puller@gone#dead00", on_progress=die)
    hub.release("tiny-Q4_K_M.gguf")
    assert ModelPull.objects.get(pk=job.pk).status == "running"
    hub.requests.clear()
    assert pulls.resume_orphaned_pulls("puller@here#11ve00") == 1  # sent to the embedded puller thread
    from inference.embedded import _puller

    _puller().submit(lambda: None).result(60)
    job.refresh_from_db()
    assert (job.status, job.worker) == ("succeeded", _embedded_name())
    ranges = [r for _, r in fetched(hub)]
    assert ranges == [f"bytes={2 * MiB}-"]
    assert Path(job.result.path).read_bytes() == repos.files["Q4_K_M"]


def _embedded_name() -> str:
    from inference.embedded import embedded_hostname

    return embedded_hostname()


def test_check_for_update_sees_a_newer_commit_and_pulls_it_as_a_model_of_its_own(hub, repos):
    pull(repos.gguf)
    model = LocalModel.objects.get()
    old_commit = model.provenance["commit"]
    assert pulls.update_check(model) == (old_commit, False)
    repo = hub.repos[repos.gguf]
    newer = repo.publish({**repo.commits[old_commit], "tiny-Q4_K_M.gguf": repos.files["Q5_K_M"]})
    try:
        assert pulls.update_check(model) == (newer, True)
        job = pulls.update_pull_start(model, dispatch=False)
        pulls.pull_run(job.pk)
        job.refresh_from_db()
        assert job.status == "succeeded" and job.result.name == f"tiny-q4_k_m-{newer[:7]}"
        assert job.result.provenance["commit"] == newer
        assert LocalModel.objects.filter(name="tiny-q4_k_m").exists()  # the old one stays
    finally:
        repo.refs["main"] = old_commit


def test_pulling_what_the_library_already_has_fetches_nothing(hub, repos):
    pull(repos.gguf)
    hub.requests.clear()
    output = pull(repos.gguf)
    assert "Added tiny-q4_k_m" in output and hub.fetched() == []
    assert LocalModel.objects.count() == 1 and ModelPull.objects.filter(status="succeeded").count() == 2


def test_the_curated_list_reads_its_data_file():
    entries = pulls.curated_models()
    assert len(entries) >= 3
    for entry in entries:
        assert "/" in entry.repo and entry.file.endswith(".gguf") and entry.size > 0 and entry.context > 0
        assert entry.licence


# --- the library and jobs pages ----------------------------------------------------------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_user("root", password="pw-root-123", is_staff=True))
    return client


def test_members_see_no_pull_controls_and_get_403(client, repos):
    client.force_login(get_user_model().objects.create_user("member", password="pw-member-123"))
    assert 'id="pull-form"' not in client.get("/models/").content.decode()
    assert client.post("/models/pulls/new/", {"repo": repos.gguf}).status_code == 403
    assert client.get("/models/pulls/files/", {"repo": repos.gguf}).status_code == 403
    assert client.get("/models/pulls/").status_code == 403
    assert not ModelPull.objects.exists()


def test_the_form_queues_a_pull_and_the_page_shows_its_progress(admin_client, repos):
    response = admin_client.post("/models/pulls/new/", {"repo": f"hf.co/{repos.gguf}:Q8_0", "revision": "",
                                                        "name": "tiny-eight"})
    assert response.status_code == 302 and response["Location"].endswith("/models/#pulls")
    job = ModelPull.objects.get()
    assert (job.repo, job.quant, job.result_name, job.status) == (repos.gguf, "Q8_0", "tiny-eight", "queued")
    html = admin_client.get("/models/").content.decode()
    assert f'data-pull="{job.pk}"' in html and "waiting for the puller" in html and 'data-active="1"' in html
    ModelPull.objects.filter(pk=job.pk).update(status="running", phase="downloading", current_file="tiny-Q8_0.gguf",
                                               bytes_total=4 * MiB, bytes_done=2 * MiB, bytes_per_second=MiB)
    partial = admin_client.get("/models/pulls/").content.decode()
    assert f'max="{4 * MiB}" value="{2 * MiB}"' in partial
    assert "downloading tiny-Q8_0.gguf: 2.0 MB of 4.0 MB (50%), 1.0 MB/s, 2 s left" in partial
    assert "Cancel the pull" in partial
    assert f'data-pull="{job.pk}"' in admin_client.get("/jobs/?partial=1").content.decode()  # the jobs page too


def test_the_form_says_what_is_wrong(admin_client):
    response = admin_client.post("/models/pulls/new/", {"repo": "llama3.2"}, follow=True)
    assert "not a Hugging Face repo name" in response.content.decode()
    assert not ModelPull.objects.exists()


def test_the_file_list_answers_json_and_the_hubs_refusals_as_4xx(admin_client, repos):
    listed = admin_client.get("/models/pulls/files/", {"repo": repos.gguf}).json()
    assert [f["name"] for f in listed["files"] if f["default"]] == ["tiny-Q4_K_M.gguf"]
    missing = admin_client.get("/models/pulls/files/", {"repo": "acme/nothing-here"})
    assert missing.status_code == 404 and "There is no repo" in missing.json()["error"]["message"]
    gated = admin_client.get("/models/pulls/files/", {"repo": repos.gated})
    assert gated.status_code == 403 and "HF_TOKEN" in gated.json()["error"]["message"]
    assert admin_client.get("/models/pulls/files/", {"repo": "x"}).status_code == 400


def test_an_admin_cancels_a_queued_pull_from_the_page(admin_client, repos):
    job = pulls.pull_start(repos.gguf, dispatch=False)
    response = admin_client.post(f"/models/pulls/{job.pk}/cancel/", {"next": "/jobs/"})
    assert response.status_code == 302 and response["Location"] == "/jobs/"
    job.refresh_from_db()
    assert job.status == "cancelled"
    evil = admin_client.post(f"/models/pulls/{job.pk}/cancel/", {"next": "https://evil.example/"})
    assert evil["Location"] == "/models/"


def test_the_library_page_offers_the_curated_models(admin_client):
    html = admin_client.get("/models/").content.decode()
    for entry in pulls.curated_models():
        assert f'data-curated="{entry.name}"' in html and entry.repo in html and entry.licence in html


def test_a_pulled_models_page_shows_its_source_and_checks_for_updates(admin_client, hub, repos):
    pull(repos.gguf)
    model = LocalModel.objects.get()
    html = admin_client.get(f"/models/{model.name}/").content.decode()
    assert f'href="{hub.url}/{repos.gguf}"' in html and model.provenance["commit"] in html
    assert "tiny-Q4_K_M.gguf" in html and 'id="check-update"' in html
    checked = admin_client.post(f"/models/{model.name}/check-update/", follow=True).content.decode()
    assert "Up to date: main is still at" in checked

