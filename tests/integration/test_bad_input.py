"""Bad input on real servers, embedded (SQLite) and production (PostgreSQL, which refuses NUL in text): a NUL,
a lone surrogate or broken JSON anywhere in a request or a chat-socket message gets a clear 400 (or a socket error
message that leaves the socket open), never a 500; and a bad upload is refused leaving nothing behind."""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile

import httpx
import pytest

from tests.integration.chat_client import ChatSocket, login

NUL, SURROGATE = "\u0000", "\ud800"
SERVERS = ["embedded_server", pytest.param("production_server", marks=pytest.mark.production)]


@pytest.fixture(params=SERVERS)
def server(request):
    return request.getfixturevalue(request.param)


def api(server, method: str, path: str, body=None, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)  # \u escapes
    return httpx.request(method, f"{server.base_url}{path}", content=content, timeout=120,
                         headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})


def assert_refused(response: httpx.Response, code: str, param: str | None = None) -> dict:
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def chat(content="Hi", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


# ---------------------------------------------------------------------------------------------------------
# The API: JSON bodies, path and query parameters


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", chat(f"a{NUL}b"), "messages.0.content"),
    ("/v1/chat/completions", chat(f"a{SURROGATE}b"), "messages.0.content"),
    ("/v1/chat/completions", chat(stop=[f"x{NUL}"]), "stop.0"),
    ("/v1/chat/completions", chat(stop=SURROGATE), "stop"),
    ("/v1/chat/completions", {**chat(), "model": f"ti{NUL}ny"}, "model"),
    ("/v1/chat/completions", chat(logit_bias={NUL: 1}), "logit_bias"),
    ("/v1/chat/completions", chat(user=SURROGATE), "user"),
    ("/v1/completions", {"model": "tiny", "prompt": f"a{NUL}", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": ["ok", SURROGATE], "max_tokens": 2}, "prompt.1"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stop": NUL, "max_tokens": 2}, "stop"),
    ("/v1/embeddings", {"model": "tiny", "input": f"a{NUL}"}, "input"),
])
def test_it_refuses_nul_and_lone_surrogates_in_a_json_body_naming_the_parameter(server, path, body, param):
    error = assert_refused(api(server, "POST", path, body), "invalid_text", param)
    assert "NUL" in error["message"] or "surrogate" in error["message"]


def test_it_refuses_a_nul_in_a_chat_message_and_serves_the_next_request(server):
    assert_refused(api(server, "POST", "/v1/chat/completions", chat(f"Hello{NUL}")), "invalid_text")
    assert api(server, "POST", "/v1/chat/completions", chat("Hello")).status_code == 200


@pytest.mark.parametrize(("raw", "says"), [
    (b'{"model": "tiny", "prompt": "caf\xe9"}', "not UTF-8"),
    (b'{"model": "tiny", "prompt": "a", "temperature": NaN}', "NaN"),
    (b'{"model": "tiny", "prompt": "a", "temperature": -Infinity}', "-Infinity"),
    (b'{"model": "tiny", "prompt": "a", "temperature": 1e999}', "too large"),
    (b'{"model": "tiny", "prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"model": "tiny", "prompt": ', "Expecting value"),
])
def test_it_refuses_a_body_that_is_not_strict_json(server, raw, says):
    error = assert_refused(api(server, "POST", "/v1/completions", raw=raw), "invalid_json")
    assert says in error["message"], error


@pytest.mark.parametrize(("path", "param"), [
    ("/v1/models/ti%00ny", "model_id"),
    ("/v1/models?limit=%00", "limit"),
    ("/v1/chat/completions?x=a%00", "x"),
])
def test_it_refuses_a_nul_in_a_url_parameter(server, path, param):
    method = "POST" if "completions" in path else "GET"
    assert_refused(api(server, method, path, chat() if method == "POST" else None), "invalid_text", param)


# ---------------------------------------------------------------------------------------------------------
# Pages: forms and query strings get the 400 page, and nothing is stored


def csrf(session: httpx.Client, server) -> dict:
    return {"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{server.base_url}/"}


def assert_bad_request_page(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    assert "Hearth cannot take that request" in response.text
    assert "NUL" in response.text or "surrogate" in response.text


@pytest.fixture
def session(server):
    """An admin's browser session."""
    client = login(server)
    yield client
    client.close()


@pytest.fixture
def conversation_id(server) -> int:
    """A conversation of the admin's."""
    code = ("from django.contrib.auth import get_user_model; from webui.models import Conversation; "
            "print(Conversation.objects.create(owner=get_user_model().objects.get(username='admin'), "
            "title='A conversation to edit').pk)")
    return int(server.manage("shell", "-c", code).stdout.split()[-1])


def test_a_nul_in_the_chat_settings_form_gets_the_400_page_and_changes_nothing(server, session, conversation_id):
    response = session.post(f"/c/{conversation_id}/settings/", headers=csrf(session, server),
                            data={"system_prompt": f"Be brief{NUL}", "temperature": "0.5", "model": "tiny"})
    assert_bad_request_page(response)
    page = session.get(f"/c/{conversation_id}/").text
    assert "Be brief" not in page


@pytest.mark.parametrize(("path", "data"), [
    ("/c/{conversation}/rename/", {"title": f"Renamed{NUL}"}),
    ("/keys/new/", {"name": f"laptop{NUL}"}),
    ("/users/", {"action": "create", "username": f"eve{NUL}", "password": "a-long-password", "role": "member"}),
])
def test_a_nul_in_a_page_form_gets_the_400_page(server, session, conversation_id, path, data):
    response = session.post(path.format(conversation=conversation_id), data=data, headers=csrf(session, server))
    assert_bad_request_page(response)


@pytest.mark.parametrize("path", ["/?q=%00", "/admin/auth/user/?q=%00", "/jobs/?partial=%00", "/models/ti%00ny/"])
def test_a_nul_in_a_page_url_gets_the_400_page(server, session, path):
    assert_bad_request_page(session.get(path))


def test_a_nul_in_the_login_form_gets_the_400_page(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as session:
        session.get("/login/")
        response = session.post("/login/", headers=csrf(session, server),
                                data={"username": f"admin{NUL}", "password": "x",
                                      "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert_bad_request_page(response)


def test_an_upload_named_with_a_lone_surrogate_is_refused_as_json(server, session):
    response = session.post("/models/uploads/", headers=csrf(session, server),
                            content=json.dumps({"filename": f"{SURROGATE}.gguf", "size": 10, "name": "odd"}))
    assert response.status_code == 400, response.text[:500]
    assert response.json()["error"]["code"] == "invalid_text"
    assert response.json()["error"]["param"] == "filename"


# ---------------------------------------------------------------------------------------------------------
# The chat socket: every bad message gets an error message back, and the socket keeps working


@pytest.fixture
def socket(server, session):
    chat_socket = ChatSocket(server, session)
    yield chat_socket
    chat_socket.close()


def assert_still_usable(socket: ChatSocket) -> None:
    """The consumer still answers: here with the error for a job that does not exist (no generation needed)."""
    socket.send(type="stop", job="00000000-0000-0000-0000-000000000000")
    assert socket.receive() == {"type": "error", "code": "not_found", "message": "No such job."}


def test_a_socket_still_chats_after_a_refused_message(embedded_server):
    socket = ChatSocket(embedded_server, login(embedded_server))
    socket.send(type="send", conversation=None, model="tiny", content=f"Hi{NUL}")
    assert socket.receive()["code"] == "invalid_text"
    socket.send(type="send", conversation=None, model="tiny", content="Hi")
    assert socket.receive()["type"] == "accepted"
    assert socket.events_until_terminal()[-1]["event"]["kind"] == "done"
    socket.close()


@pytest.mark.parametrize(("message", "param"), [
    ({"type": "send", "conversation": None, "model": "tiny", "content": f"Hi{NUL}"}, "content"),
    ({"type": "send", "conversation": None, "model": "tiny", "content": f"Hi{SURROGATE}"}, "content"),
    ({"type": "send", "conversation": None, "model": f"tiny{NUL}", "content": "Hi"}, "model"),
    ({"type": "send", "conversation": None, "model": "tiny", "content": "Hi", "system_prompt": NUL}, "system_prompt"),
    ({"type": "send", "conversation": None, "model": "tiny", "content": "Hi", "sampling": {NUL: 1}}, "sampling"),
    ({"type": "complete", "model": "tiny", "prompt": f"Once{NUL}"}, "prompt"),
    ({"type": "stop", "job": NUL}, "job"),
])
def test_it_refuses_a_nul_or_lone_surrogate_in_a_socket_message_and_stays_open(server, socket, message, param):
    socket.send(**message)
    reply = socket.receive()
    assert reply["type"] == "error" and reply["code"] == "invalid_text", reply
    assert reply["param"] == param and reply["message"]
    assert_still_usable(socket)


@pytest.mark.parametrize(("frame", "says"), [
    ("{not json", "not valid JSON"),
    ('{"type": "send", "content": NaN}', "NaN"),
    ("", "not valid JSON"),
    (b"\x00\x01binary", "binary"),
])
def test_it_answers_a_frame_that_is_not_a_json_text_message_with_an_error_and_stays_open(server, socket, frame, says):
    socket.socket.send(frame)
    reply = socket.receive()
    assert reply["type"] == "error" and reply["code"] == "bad_message", reply
    assert says in reply["message"]
    assert_still_usable(socket)


def test_a_message_the_consumer_cannot_handle_gets_an_error_and_the_socket_stays_open(embedded_server):
    socket = ChatSocket(embedded_server, login(embedded_server))
    socket.send(type="send", conversation=None, model="tiny", content="Hi")
    job = socket.receive()["job"]
    socket.events_until_terminal()
    socket.send(type="resume", job=job, after="not a number")
    reply = socket.receive()
    assert reply["type"] == "error" and reply["code"] == "internal_error", reply
    assert_still_usable(socket)
    socket.close()


# ---------------------------------------------------------------------------------------------------------
# Uploads: a damaged zip, or one with pickled weights, is refused and leaves nothing behind


def zip_of(files: dict[str, bytes], folder: str = "model") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    return buffer.getvalue()


def with_bad_crc(archive: bytes, member_data: bytes) -> bytes:
    """The archive with one byte of a stored member changed: its CRC-32 no longer matches."""
    at = archive.index(member_data) + len(member_data) // 2
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1:]


def hf_files(tiny_hf) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tiny_hf.iterdir()) if p.is_file()}


def upload_zip(server, session, data: bytes, name: str) -> tuple[str, httpx.Response]:
    headers = csrf(session, server)
    created = session.post("/models/uploads/", json={"filename": f"{name}.zip", "size": len(data), "name": name},
                           headers=headers)
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    sent = session.put(f"/models/uploads/{upload_id}/?offset=0", content=data, headers=headers)
    assert sent.status_code == 200, sent.text
    return upload_id, session.post(f"/models/uploads/{upload_id}/finish/", headers=headers)


def assert_nothing_left(server, session, upload_id: str, name: str) -> None:
    library = server.data_dir / "models"
    assert not (library / name).exists() and not (library / f"{name}.unpacking").exists()
    assert not [p for p in (library / ".uploads").iterdir() if p.name.startswith(upload_id)]
    state = session.get(f"/models/uploads/{upload_id}/").json()
    assert state["status"] == "failed" and state["error"], state
    assert name not in re.sub(r"<script.*?</script>", "", session.get("/models/").text, flags=re.S)


def test_a_zip_with_a_bad_crc_is_refused_and_leaves_nothing_behind(server, session, tiny_hf):
    files = hf_files(tiny_hf)
    damaged = with_bad_crc(zip_of(files), files["model.safetensors"])
    upload_id, finished = upload_zip(server, session, damaged, "crc-damaged")
    assert finished.status_code == 400, finished.text
    error = finished.json()["error"]
    assert error["code"] == "bad_zip" and "damaged" in error["message"]
    assert_nothing_left(server, session, upload_id, "crc-damaged")


@pytest.mark.parametrize(("extra_name", "says"), [
    ("pytorch_model.bin", "pytorch_model.bin"),   # by its name, before anything is unpacked
    ("optimizer.state", "optimizer.state"),       # by its content, once unpacked
])
def test_a_zip_with_pickled_weights_beside_safetensors_is_refused_and_leaves_nothing_behind(
    server, session, tiny_hf, extra_name, says
):
    pickled = pickle.dumps({"weight": list(range(100))}, protocol=4)
    name = f"pickled-{extra_name.split('.')[0].replace('_', '-')}"
    upload_id, finished = upload_zip(server, session, zip_of({**hf_files(tiny_hf), extra_name: pickled}), name)
    assert finished.status_code == 400, finished.text
    error = finished.json()["error"]
    assert error["code"] == "pickle_refused" and says in error["message"], error
    assert_nothing_left(server, session, upload_id, name)


def test_the_same_zip_without_the_pickle_is_imported(server, session, tiny_hf):
    """The refusals above are about the pickle and the damage, not about the zip."""
    _upload_id, finished = upload_zip(server, session, zip_of(hf_files(tiny_hf)), "zip-clean")
    assert finished.status_code == 200, finished.text
    assert session.post("/models/zip-clean/delete/", headers=csrf(session, server)).status_code in (200, 302)
