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


def test_a_member_gets_403_and_sees_no_upload_or_delete_controls(member_client, library, tiny_gguf):
    LocalModel.objects.create(name="kept", path=str(tiny_gguf), format="gguf")
    assert start(member_client, "x.gguf", 10).status_code == 403
    assert member_client.post("/models/kept/delete/").status_code == 403
    assert LocalModel.objects.filter(name="kept").exists()
    page = member_client.get("/models/").content.decode()
    assert "kept" in page
    assert 'id="upload-form"' not in page and "delete-model" not in page and "upload.js" not in page
