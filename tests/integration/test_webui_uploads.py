"""Model uploads through the library page's endpoints: chunked, resumable, size-limited, validated; admins only."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from inference.models import LocalModel
from webui.models import Upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def library(tmp_path, settings):
    settings.MODELS_DIR = tmp_path / "models"
    settings.MODELS_DIR.mkdir()
    return settings.MODELS_DIR


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_user("root", password="pw-root-123", is_staff=True))
    return client


@pytest.fixture
def member_client(client):
    client.force_login(get_user_model().objects.create_user("member", password="pw-member-123"))
    return client


def start(client, filename: str, size: int, name: str = ""):
    return client.post("/models/uploads/", {"filename": filename, "size": size, "name": name},
                       content_type="application/json")


def put(client, upload_id: str, offset: int, data: bytes):
    return client.put(f"/models/uploads/{upload_id}/?offset={offset}", data, content_type="application/octet-stream")


def upload(client, filename: str, data: bytes, name: str = "", chunk: int = 200_000):
    created = start(client, filename, len(data), name)
    assert created.status_code == 201, created.content
    upload_id = created.json()["id"]
    for offset in range(0, len(data), chunk):
        assert put(client, upload_id, offset, data[offset:offset + chunk]).status_code == 200
    return upload_id, client.post(f"/models/uploads/{upload_id}/finish/")


def test_an_admin_uploads_a_gguf_in_chunks_and_it_joins_the_library(admin_client, library, tiny_gguf):
    data = tiny_gguf.read_bytes()
    upload_id, finished = upload(admin_client, "my-tiny.gguf", data, name="uploaded-tiny")
    assert finished.status_code == 200, finished.content
    assert finished.json()["model"] == "uploaded-tiny"
    model = LocalModel.objects.get(name="uploaded-tiny")
    assert model.format == "gguf" and model.path == str((library / "uploaded-tiny.gguf").resolve())
    assert (library / "uploaded-tiny.gguf").read_bytes() == data
    assert not list((library / ".uploads").iterdir())
    page = admin_client.get("/models/").content.decode()
    assert "uploaded-tiny" in page and 'id="upload-form"' in page


def test_an_upload_resumes_from_what_arrived_and_never_writes_a_chunk_twice(admin_client, library, tiny_gguf):
    data = tiny_gguf.read_bytes()
    upload_id = start(admin_client, "resume.gguf", len(data)).json()["id"]
    assert put(admin_client, upload_id, 0, data[:100_000]).json()["received"] == 100_000
    retried = put(admin_client, upload_id, 0, data[:100_000])  # a retry of a chunk that already arrived
    assert retried.status_code == 409 and retried.json()["received"] == 100_000
    assert admin_client.get(f"/models/uploads/{upload_id}/").json()["received"] == 100_000  # after a reload
    early = admin_client.post(f"/models/uploads/{upload_id}/finish/")
    assert early.status_code == 409 and "100,000 of" in early.json()["error"]["message"]
    assert put(admin_client, upload_id, 100_000, data[100_000:]).status_code == 200
    assert admin_client.post(f"/models/uploads/{upload_id}/finish/").status_code == 200
    assert (library / "resume.gguf").read_bytes() == data


def test_it_refuses_a_file_over_the_size_limit_before_any_byte_arrives(admin_client, library):
    with override_settings(HEARTH_MAX_UPLOAD_BYTES=1000):
        refused = start(admin_client, "big.gguf", 1001)
    assert refused.status_code == 413
    assert "at most 1,000" in refused.json()["error"]["message"]
    assert not Upload.objects.exists()


def test_it_refuses_other_file_kinds_and_a_file_that_is_not_gguf(admin_client, library):
    assert start(admin_client, "model.bin", 10).status_code == 400
    _, refused = upload(admin_client, "fake.gguf", b"PK\x03\x04 not a gguf at all")
    assert refused.status_code == 400 and "not a GGUF" in refused.json()["error"]["message"]
    assert not (library / "fake.gguf").exists()
    assert Upload.objects.get().status == "failed"


def zip_bytes(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, content in entries:
            archive.writestr(info, content)
    return buffer.getvalue()


def link_entry(name: str, target: str):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


@pytest.mark.parametrize(("entries", "reason"), [
    ([("model/../../evil.txt", "x")], "climbs out"),
    ([("/etc/evil.txt", "x")], "absolute path"),
    ([link_entry("model/config.json", "/etc/passwd")], "link"),
    ([("model/weights.bin", "\0" * 5_000_000)], "zip bomb"),
])
def test_it_refuses_a_hostile_zip_and_leaves_nothing_behind(admin_client, library, entries, reason):
    _, refused = upload(admin_client, "hostile.zip", zip_bytes(entries))
    assert refused.status_code == 400
    assert reason in refused.json()["error"]["message"]
    assert [p.name for p in library.iterdir()] == [".uploads"]
    assert not list((library / ".uploads").iterdir())
    assert not (library.parent / "evil.txt").exists()


def test_a_hugging_face_folder_as_a_zip_is_unpacked_and_imported(admin_client, library, tiny_hf):
    entries = [(f"tiny-hf/{p.relative_to(tiny_hf)}", p.read_bytes()) for p in sorted(tiny_hf.rglob("*"))
               if p.is_file()]
    _, finished = upload(admin_client, "tiny-hf.zip", zip_bytes(entries), name="hf-upload")
    assert finished.status_code == 200, finished.content
    model = LocalModel.objects.get(name="hf-upload")
    assert model.format == "hf-safetensors"
    assert (library / "hf-upload" / "config.json").exists()


def test_an_admin_deletes_a_model_and_its_files(admin_client, library, tiny_gguf):
    upload(admin_client, "gone.gguf", tiny_gguf.read_bytes())
    response = admin_client.post("/models/gone/delete/")
    assert response.status_code == 302
    assert not LocalModel.objects.filter(name="gone").exists()
    assert not (library / "gone.gguf").exists()


def test_deleting_a_model_removes_the_gguf_a_worker_converted_it_into(admin_client, library, tiny_gguf):
    from inference.selection import converted_path

    upload(admin_client, "twin.gguf", tiny_gguf.read_bytes())
    twin = converted_path(LocalModel.objects.get(name="twin"))
    twin.parent.mkdir(parents=True, exist_ok=True)
    twin.write_bytes(b"GGUF converted for llama.cpp")
    assert admin_client.post("/models/twin/delete/").status_code == 302
    assert not twin.exists()


def test_a_member_gets_403_and_sees_no_upload_or_delete_controls(member_client, library, tiny_gguf):
    LocalModel.objects.create(name="kept", path=str(tiny_gguf), format="gguf")
    assert start(member_client, "x.gguf", 10).status_code == 403
    assert member_client.post("/models/kept/delete/").status_code == 403
    assert LocalModel.objects.filter(name="kept").exists()
    page = member_client.get("/models/").content.decode()
    assert "kept" in page
    assert 'id="upload-form"' not in page and "delete-model" not in page and "upload.js" not in page


# ---------------------------------------------------------------------------------------------------------
# A Hugging Face folder sent as separate files: one staging folder, each file chunked and resumable.


def folder_files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def start_folder(client, files: dict[str, bytes], name: str = "", folder: str = ""):
    listing = [{"name": file_name, "size": len(data)} for file_name, data in files.items()]
    return client.post("/models/uploads/", {"files": listing, "name": name, "folder": folder},
                       content_type="application/json")


def put_file(client, upload_id: str, file_name: str, offset: int, data: bytes):
    return client.put(f"/models/uploads/{upload_id}/?offset={offset}&file={file_name}", data,
                      content_type="application/octet-stream")


def upload_folder(client, files: dict[str, bytes], name: str, chunk: int = 50_000):
    created = start_folder(client, files, name)
    assert created.status_code == 201, created.content
    upload_id = created.json()["id"]
    for file_name, data in files.items():
        for offset in range(0, len(data), chunk):
            sent = put_file(client, upload_id, file_name, offset, data[offset:offset + chunk])
            assert sent.status_code == 200, sent.content
    return upload_id, client.post(f"/models/uploads/{upload_id}/finish/")


def test_an_admin_uploads_a_hugging_face_folder_as_separate_files(admin_client, library, tiny_hf):
    files = folder_files(tiny_hf)
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= set(files)
    upload_id, finished = upload_folder(admin_client, files, "hf-files")
    assert finished.status_code == 200, finished.content
    model = LocalModel.objects.get(name="hf-files")
    assert model.format == "hf-safetensors" and model.architecture == "llama"
    assert model.path == str((library / "hf-files").resolve())
    assert folder_files(library / "hf-files") == files  # every byte where it belongs, nothing more
    assert not list((library / ".uploads").iterdir())
    upload = Upload.objects.get(pk=upload_id)
    assert upload.status == "imported" and upload.received == upload.size == sum(map(len, files.values()))


def test_a_folder_upload_resumes_each_file_from_what_arrived(admin_client, library, tiny_hf):
    files = folder_files(tiny_hf)
    upload_id = start_folder(admin_client, files, "hf-resumed", folder="tiny-hf").json()["id"]
    weights = files["model.safetensors"]
    assert put_file(admin_client, upload_id, "config.json", 0, files["config.json"]).status_code == 200
    assert put_file(admin_client, upload_id, "model.safetensors", 0, weights[:30_000]).status_code == 200
    retried = put_file(admin_client, upload_id, "model.safetensors", 0, weights[:30_000])
    assert retried.status_code == 409
    state = admin_client.get(f"/models/uploads/{upload_id}/").json()  # what a reloaded page asks
    received = {f["name"]: f["received"] for f in state["files"]}
    assert received["config.json"] == len(files["config.json"]) and received["model.safetensors"] == 30_000
    assert received["tokenizer.json"] == 0
    assert state["received"] == len(files["config.json"]) + 30_000 and state["filename"] == "tiny-hf"
    early = admin_client.post(f"/models/uploads/{upload_id}/finish/")
    assert early.status_code == 409
    unfinished = admin_client.get("/models/").content.decode()
    assert f"tiny-hf ({len(files)} files) as <code>hf-resumed</code>" in unfinished
    for file_name, data in files.items():
        offset = received[file_name]
        if offset < len(data):
            assert put_file(admin_client, upload_id, file_name, offset, data[offset:]).status_code == 200
    finished = admin_client.post(f"/models/uploads/{upload_id}/finish/")
    assert finished.status_code == 200, finished.content
    assert folder_files(library / "hf-resumed") == files


@pytest.mark.parametrize(("file_name", "reason"), [
    ("../config.json", "is a path"),
    ("sub/model.safetensors", "is a path"),
    ("/etc/passwd", "is a path"),
    ("..\\evil.json", "is a path"),
    (".hidden.json", "hidden file"),
    ("evil..json", "contains '..'"),
    ("pytorch_model.bin", "pickled PyTorch"),
    ("weights.pt", "pickled PyTorch"),
    ("tokenizer\u202ejson", "not a file name Hearth accepts"),
    ("read me.md", "not a file name Hearth accepts"),
])
def test_it_refuses_a_folder_with_a_bad_file_name_before_any_byte_arrives(admin_client, library, tiny_hf,
                                                                         file_name, reason):
    files = {**folder_files(tiny_hf), file_name: b"x"}
    refused = start_folder(admin_client, files, "hf-bad")
    assert refused.status_code == 400, refused.content
    assert reason in refused.json()["error"]["message"]
    assert not Upload.objects.exists()
    assert not list((library / ".uploads").iterdir())


def test_it_refuses_a_folder_that_is_not_a_model_or_names_a_file_twice(admin_client, library, tiny_hf):
    files = folder_files(tiny_hf)
    no_weights = {k: v for k, v in files.items() if k != "model.safetensors"}
    refused = start_folder(admin_client, no_weights, "hf-bad")
    assert refused.status_code == 400 and "lacks *.safetensors weights" in refused.json()["error"]["message"]
    listing = [{"name": "config.json", "size": 3}, {"name": "CONFIG.json", "size": 3}]
    twice = admin_client.post("/models/uploads/", {"files": listing, "name": "x"}, content_type="application/json")
    assert twice.status_code == 400 and "listed twice" in twice.json()["error"]["message"]
    for bad in ([], "config.json", [{"name": "config.json"}], [{"name": "config.json", "size": "many"}]):
        response = admin_client.post("/models/uploads/", {"files": bad, "name": "x"}, content_type="application/json")
        assert response.status_code == 400, (bad, response.content)
    assert not Upload.objects.exists()


def test_a_pickle_disguised_in_the_folder_is_refused_when_it_arrives(admin_client, library, tiny_hf):
    import pickle

    files = {**folder_files(tiny_hf), "notes.txt": pickle.dumps({"weights": [1, 2, 3]}, protocol=4)}
    upload_id, refused = upload_folder(admin_client, files, "hf-pickled")
    assert refused.status_code == 400, refused.content
    assert "notes.txt holds pickled data" in refused.json()["error"]["message"]
    assert not LocalModel.objects.filter(name="hf-pickled").exists()
    assert [p.name for p in library.iterdir()] == [".uploads"] and not list((library / ".uploads").iterdir())
    assert Upload.objects.get(pk=upload_id).status == "failed"


def test_a_folder_whose_files_are_not_a_loadable_model_is_refused_and_removed(admin_client, library, tiny_hf):
    files = {**folder_files(tiny_hf), "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}"}
    _, refused = upload_folder(admin_client, files, "hf-corrupt")
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["message"]
    assert [p.name for p in library.iterdir()] == [".uploads"] and not list((library / ".uploads").iterdir())


def test_the_size_limit_applies_to_the_folder_total(admin_client, library, tiny_hf):
    files = folder_files(tiny_hf)
    total = sum(map(len, files.values()))
    assert max(map(len, files.values())) < total - 1
    with override_settings(HEARTH_MAX_UPLOAD_BYTES=total - 1):
        refused = start_folder(admin_client, files, "hf-big")
        assert refused.status_code == 413 and f"at most {total - 1:,}" in refused.json()["error"]["message"]
        assert start_folder(admin_client, files, "hf-fits").status_code == 413
    with override_settings(HEARTH_MAX_UPLOAD_BYTES=total):
        assert start_folder(admin_client, files, "hf-fits").status_code == 201


def test_a_folder_chunk_goes_to_a_named_file_only_and_never_past_its_size(admin_client, library, tiny_hf):
    files = folder_files(tiny_hf)
    upload_id = start_folder(admin_client, files, "hf-strict").json()["id"]
    unknown = put_file(admin_client, upload_id, "other.json", 0, b"{}")
    assert unknown.status_code == 404 and "no file named" in unknown.json()["error"]["message"]
    nameless = admin_client.put(f"/models/uploads/{upload_id}/?offset=0", b"{}", content_type="application/json")
    assert nameless.status_code == 404
    too_much = put_file(admin_client, upload_id, "config.json", 0, files["config.json"] + b" ")
    assert too_much.status_code == 400 and "more data" in too_much.json()["error"]["message"]


def test_a_member_cannot_start_a_folder_upload(member_client, library, tiny_hf):
    assert start_folder(member_client, folder_files(tiny_hf), "hf-member").status_code == 403
    assert not Upload.objects.exists()


# ---------------------------------------------------------------------------------------------------------
# Abandoned uploads: their partial files are swept away after HEARTH_UPLOAD_ABANDON_HOURS.


def set_back(path, hours: float) -> None:
    import os
    import time

    moment = time.time() - hours * 3600
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (moment, moment))


def test_abandoned_uploads_are_swept_and_fresh_ones_kept(admin_client, library, tiny_gguf, tiny_hf, settings):
    from django.core.management import call_command

    settings.HEARTH_UPLOAD_ABANDON_HOURS = 24
    data = tiny_gguf.read_bytes()
    old_file = start(admin_client, "old.gguf", len(data)).json()["id"]
    assert put(admin_client, old_file, 0, data[:1000]).status_code == 200
    files = folder_files(tiny_hf)
    old_folder = start_folder(admin_client, files, "old-folder").json()["id"]
    assert put_file(admin_client, old_folder, "config.json", 0, files["config.json"]).status_code == 200
    fresh = start(admin_client, "fresh.gguf", len(data)).json()["id"]
    uploads = library / ".uploads"
    stray = uploads / "left-by-a-crash.part"
    stray.write_bytes(b"x" * 10)
    set_back(uploads / f"{old_file}.part", 25)
    set_back(uploads / old_folder, 25)
    set_back(stray, 25)
    set_back(uploads / f"{fresh}.part", 23)  # old, but not old enough

    call_command("sweep_uploads")

    assert sorted(p.name for p in uploads.iterdir()) == [f"{fresh}.part"]
    for upload_id in (old_file, old_folder):
        upload = Upload.objects.get(pk=upload_id)
        assert upload.status == "failed" and "Abandoned" in upload.error_text
    assert Upload.objects.get(pk=fresh).status == "receiving"
    late = put(admin_client, old_file, 1000, data[1000:2000])  # the tab comes back a day later
    assert late.status_code == 409 and "Abandoned" in late.json()["error"]["message"]
    page = admin_client.get("/models/").content.decode()
    assert "fresh.gguf" in page and "old.gguf" not in page


def test_a_new_upload_sweeps_the_abandoned_ones(admin_client, library, tiny_gguf, settings):
    settings.HEARTH_UPLOAD_ABANDON_HOURS = 2
    data = tiny_gguf.read_bytes()
    old = start(admin_client, "old.gguf", len(data)).json()["id"]
    set_back(library / ".uploads" / f"{old}.part", 3)
    new = start(admin_client, "new.gguf", len(data)).json()["id"]
    assert [p.name for p in (library / ".uploads").iterdir()] == [f"{new}.part"]
    assert Upload.objects.get(pk=old).status == "failed"


def test_a_chunk_for_an_upload_whose_files_vanished_gets_410(admin_client, library, tiny_gguf):
    data = tiny_gguf.read_bytes()
    upload_id = start(admin_client, "vanishing.gguf", len(data)).json()["id"]
    (library / ".uploads" / f"{upload_id}.part").unlink()
    gone = put(admin_client, upload_id, 0, data[:1000])
    assert gone.status_code == 410 and "start the upload again" in gone.json()["error"]["message"]
    assert admin_client.get(f"/models/uploads/{upload_id}/").json()["status"] == "failed"
