"""Security details on real servers: the websocket origin check, the Content-Security-Policy, uncached secrets,
Secure cookies and HSTS behind a TLS proxy, keys kept out of URLs and logs, secrets kept out of a container's
log, DEBUG off with Hearth's own error pages, and server file paths shown to admins only."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import socket
import stat
import subprocess
import time
from contextlib import closing
from types import SimpleNamespace

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests import servers
from tests.integration.chat_client import ChatSocket, login

PROXY_HOST = "hearth.example.com"
TRUSTED_ORIGIN = "https://chat.example.org"


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory, tiny_gguf):
    """Hearth behind a TLS proxy at https://hearth.example.com, trusting its X-Forwarded-Proto header, and one
    more trusted origin."""
    server = servers.start_embedded(
        tmp_path_factory.mktemp("proxied"), {"tiny": tiny_gguf},
        HEARTH_TRUSTED_PROXY_HEADER="X-Forwarded-Proto",
        HEARTH_ALLOWED_HOSTS=f"127.0.0.1,{PROXY_HOST}",
        HEARTH_CSRF_TRUSTED_ORIGINS=TRUSTED_ORIGIN,
    )
    yield server
    server.stop()


def session_id(server) -> str:
    client = login(server)
    client.close()
    return client.cookies["sessionid"]


def browser_behind_tls(server, username: str = "admin") -> httpx.Client:
    """A browser at https://hearth.example.com, logged in through the proxy (which sets X-Forwarded-Proto).
    Cookies go by hand: a client keeps Secure cookies to itself on a plain http:// URL. The login's response is
    `.login_response`, the session's id `.session_id`."""
    client = httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Host": PROXY_HOST, "X-Forwarded-Proto": "https"})
    page = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    csrf_cookie = page.cookies["csrftoken"]
    response = client.post("/login/", data={
        "username": username, "password": servers.ADMIN_PASSWORD, "csrfmiddlewaretoken": token,
    }, headers={"Cookie": f"csrftoken={csrf_cookie}", "Origin": f"https://{PROXY_HOST}",
                "Referer": f"https://{PROXY_HOST}/login/"})
    assert response.status_code == 302, response.text[:500]
    client.login_response, client.session_id = response, response.cookies["sessionid"]
    client.headers["Cookie"] = f"csrftoken={csrf_cookie}; sessionid={client.session_id}"
    return client


def set_cookie(response: httpx.Response, name: str) -> str:
    return next(value for value in response.headers.get_list("set-cookie") if value.startswith(f"{name}="))


# ---------------------------------------------------------------------------------------------------------
# The chat websocket opens only from the site's own origin (scheme, host and port) or a trusted one


def handshake(server, origin: str | None, *, host: str | None = None, headers: dict | None = None,
              cookie: str | None = None) -> int:
    """The handshake's answer: 101 (switched to a websocket) or the refusal's HTTP status. `host` is what the
    request names as its Host (the connection always goes to the test server)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    extra = {**(headers or {}), **({"Cookie": f"sessionid={cookie}"} if cookie else {})}
    try:
        websocket = connect(f"ws://{host or f'127.0.0.1:{server.port}'}/ws/chat/", sock=sock, origin=origin,
                            additional_headers=extra, open_timeout=30)
    except InvalidStatus as refusal:
        return refusal.response.status_code
    websocket.close()
    return 101


@pytest.mark.parametrize(("origin", "host", "expected"), [
    ("http://127.0.0.1:{port}", None, 101),
    ("http://127.0.0.1:9999", None, 403),       # another port of the same host
    ("https://127.0.0.1:{port}", None, 403),    # another scheme
    ("http://localhost:{port}", None, 403),     # another host name, though an allowed one
    ("http://evil.example", None, 403),
    ("http://evil.example:{port}", "evil.example:{port}", 403),  # DNS rebinding: a Host not in ALLOWED_HOSTS
    ("null", None, 403),
    (None, None, 403),
])
def test_the_chat_socket_opens_only_from_the_sites_exact_origin(embedded_server, origin, host, expected):
    port = embedded_server.port
    status = handshake(embedded_server, origin and origin.format(port=port), host=host and host.format(port=port),
                       cookie=session_id(embedded_server))
    assert status == expected


@pytest.mark.parametrize(("origin", "forwarded_proto", "expected"), [
    (f"https://{PROXY_HOST}", "https", 101),
    (f"http://{PROXY_HOST}", None, 101),        # the same site served over plain http
    (f"https://{PROXY_HOST}", None, 403),       # it arrived over http: its own origin is http://
    (f"http://{PROXY_HOST}", "https", 403),
    (f"https://{PROXY_HOST}:8443", "https", 403),
    (TRUSTED_ORIGIN, None, 101),                # HEARTH_CSRF_TRUSTED_ORIGINS
    (TRUSTED_ORIGIN.replace("https", "http"), None, 403),
    (TRUSTED_ORIGIN + ":8443", None, 403),
])
def test_behind_a_tls_proxy_the_socket_takes_the_proxied_origin_and_trusted_ones(
    proxied_server, origin, forwarded_proto, expected
):
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    with closing(browser_behind_tls(proxied_server)) as browser:
        status = handshake(proxied_server, origin, host=PROXY_HOST, headers=headers, cookie=browser.session_id)
    assert status == expected


# ---------------------------------------------------------------------------------------------------------
# Secure cookies and HSTS behind TLS; settings from the environment


def test_behind_a_tls_proxy_the_session_and_csrf_cookies_are_secure_and_hsts_is_sent(proxied_server):
    with closing(browser_behind_tls(proxied_server)) as browser:
        response = browser.login_response
    assert "; Secure" in set_cookie(response, "sessionid")
    assert "; Secure" in set_cookie(response, "csrftoken")
    assert response.headers["strict-transport-security"] == "max-age=31536000"


def test_over_plain_http_by_default_cookies_are_not_marked_secure_and_no_hsts_is_sent(embedded_server):
    with httpx.Client(base_url=embedded_server.base_url, timeout=30) as client:
        page = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = client.post("/login/", data={"username": "admin", "password": servers.ADMIN_PASSWORD,
                                                "csrfmiddlewaretoken": token})
    assert response.status_code == 302, response.text[:500]
    assert "; Secure" not in set_cookie(response, "sessionid") and "; Secure" not in set_cookie(page, "csrftoken")
    assert "strict-transport-security" not in response.headers


def settings_under(tmp_path, **env) -> dict:
    code = ("import json; from django.conf import settings as s; print(json.dumps({name: getattr(s, name) for name "
            "in ['DEBUG', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SECURE_HSTS_SECONDS', "
            "'SECURE_PROXY_SSL_HEADER']}))")
    result = servers.manage(servers.base_env(tmp_path, **env), "shell", "-c", code)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("env", "expected"), [
    ({}, {"DEBUG": False, "SESSION_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0,
          "SECURE_PROXY_SSL_HEADER": None}),
    ({"HEARTH_DEBUG": "1"}, {"DEBUG": True}),
    ({"HEARTH_SECURE_COOKIES": "1"}, {"SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
                                      "SECURE_HSTS_SECONDS": 31536000, "SECURE_PROXY_SSL_HEADER": None}),
    ({"HEARTH_TRUSTED_PROXY_HEADER": "X-Forwarded-Proto"},
     {"SESSION_COOKIE_SECURE": True, "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}),
    ({"HEARTH_TRUSTED_PROXY_HEADER": "X-Forwarded-Proto", "HEARTH_SECURE_COOKIES": "0"},
     {"SESSION_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0}),
    ({"HEARTH_TRUSTED_PROXY_HEADER": "X-Forwarded-Proto", "HEARTH_SECURE_COOKIES": ""},  # compose passes ""
     {"SESSION_COOKIE_SECURE": True}),
])
def test_security_settings_follow_the_environment(tmp_path, env, expected):
    actual = settings_under(tmp_path, **env)
    assert {name: actual[name] for name in expected} == expected


@pytest.mark.parametrize(("env", "named"), [
    ({"HEARTH_TRUSTED_PROXY_HEADER": "X-Forwarded-Proto: https"}, "HEARTH_TRUSTED_PROXY_HEADER"),
    ({"HEARTH_CSRF_TRUSTED_ORIGINS": "hearth.example.com"}, "HEARTH_CSRF_TRUSTED_ORIGINS"),
    ({"HEARTH_SECURE_COOKIES": "maybe"}, "HEARTH_SECURE_COOKIES"),
])
def test_a_bad_security_setting_stops_the_server_naming_the_variable(tmp_path, env, named):
    result = servers.manage(servers.base_env(tmp_path, **env), "check", check=False)
    assert result.returncode != 0 and named in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Content-Security-Policy on every page; no inline script or style for it to block

PAGES = ["/", "/playground/", "/models/", "/models/tiny/", "/jobs/", "/keys/", "/users/", "/admin/",
         "/admin/auth/user/", "/api/docs", "/no-such-page/", "/?q=%00", "/v1/models"]
INLINE = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>|<style|\sstyle=|\son[a-z]+=|javascript:",
                    re.IGNORECASE)


@pytest.fixture(scope="module")
def admin_session(embedded_server):
    client = login(embedded_server)
    yield client
    client.close()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_strict_content_security_policy_and_nothing_inline(admin_session, path):
    response = admin_session.get(path)
    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
    assert "unsafe" not in policy
    if response.headers["content-type"].startswith("text/html"):
        assert not INLINE.findall(response.text), INLINE.findall(response.text)[:5]


def test_the_login_page_has_the_policy_too(embedded_server):
    response = httpx.get(f"{embedded_server.base_url}/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_the_api_docs_load_their_scripts_from_this_server(admin_session):
    page = admin_session.get("/api/docs").text
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert scripts and all(src.startswith("/static/") for src in scripts), scripts
    assert all(admin_session.get(src).status_code == 200 for src in scripts)


# ---------------------------------------------------------------------------------------------------------
# The API keys page is never cached


def test_the_keys_page_is_not_stored_by_browsers_or_proxies(admin_session):
    page = admin_session.get("/keys/")
    assert "no-store" in page.headers["cache-control"]
    created = admin_session.post("/keys/new/", data={"name": "shown once"},
                                 headers={"X-CSRFToken": admin_session.cookies["csrftoken"],
                                          "Referer": str(admin_session.base_url)})
    assert re.search(r"hth_[0-9a-f]{12}_\S+", created.text), "the new key is on the page"
    assert "no-store" in created.headers["cache-control"]


# ---------------------------------------------------------------------------------------------------------
# API keys in a URL are refused and never logged


@pytest.fixture(scope="module")
def member_key(embedded_server) -> str:
    return embedded_server.create_user(f"url-key-{os.getpid()}")


@pytest.mark.parametrize(("method", "path", "param", "page"), [
    ("GET", "/v1/models?api_key={key}", "api_key", False),
    ("GET", "/v1/models?key={key}", "key", False),
    ("GET", "/v1/models/tiny?API_KEY={key}", "API_KEY", False),
    ("POST", "/v1/chat/completions?access_token={key}", "access_token", False),
    ("GET", "/v1/models?q={key}", "q", False),    # a Hearth key under any name
    ("GET", "/health?token={key}", "token", False),
    ("GET", "/keys/?api_key={key}", "api_key", True),
])
def test_a_key_in_the_query_string_is_refused_and_never_logged(embedded_server, member_key, method, path, param,
                                                                page):
    response = httpx.request(method, embedded_server.base_url + path.format(key=member_key), timeout=30,
                             json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
                             if method == "POST" else None,
                             headers={"Authorization": f"Bearer {member_key}"})
    assert response.status_code == 400, response.text[:300]
    if page:
        assert "Hearth cannot take that request" in response.text and "Authorization" in response.text
    else:
        error = response.json()["error"]
        assert error["code"] == "api_key_in_url" and error["param"] == param
        assert "Authorization: Bearer" in error["message"] and member_key not in error["message"]
    logged = wait_for_log_line(embedded_server, path.split("?", 1)[0])
    assert member_key not in all_logs(embedded_server)
    assert "?" not in logged.split('"')[1]


def all_logs(server) -> str:
    return "\n".join(log.read_text(errors="replace") for log in server.logs if log.exists())


def wait_for_log_line(server, path: str, timeout: float = 10) -> str:
    """The newest access-log line of a request to `path` (daphne writes it when the response completes)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in all_logs(server).splitlines() if f' "GET {path}' in line or f' "POST {path}' in line]
        if lines or time.monotonic() > deadline:
            assert lines, f"no access-log line for {path}"
            return lines[-1]
        time.sleep(0.1)


def test_the_access_log_shows_paths_without_query_strings(embedded_server, member_key):
    marker = f"marker{os.getpid()}"
    response = httpx.get(f"{embedded_server.base_url}/v1/models?{marker}=1", timeout=30,
                         headers={"Authorization": f"Bearer {member_key}"})
    assert response.status_code == 200
    assert wait_for_log_line(embedded_server, "/v1/models")
    time.sleep(0.5)
    assert marker not in all_logs(embedded_server)


# ---------------------------------------------------------------------------------------------------------
# bootstrap_admin prints secrets on a terminal only


def bootstrap(tmp_path, *, on_terminal: bool) -> tuple[str, str]:
    """Migrate a fresh data folder and run bootstrap_admin with a generated password; (its output, the
    credentials file's text)."""
    env = servers.base_env(tmp_path, HEARTH_ADMIN_PASSWORD="")
    servers.manage(env, "migrate", "--noinput")
    command = [servers.PYTHON, "manage.py", "bootstrap_admin"]
    if on_terminal:
        primary, secondary = pty.openpty()
        subprocess.run(command, cwd=servers.ROOT, env=env, stdout=secondary, stderr=secondary, timeout=300,
                       check=True)
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed and everything was read
                break
            if not chunk:
                break
            output += chunk
        os.close(primary)
        printed = output.decode()
    else:
        printed = subprocess.run(command, cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=300,
                                 check=True).stdout
    secret_file = tmp_path / "admin-credentials.txt"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    return printed, secret_file.read_text()


def credential(text: str, name: str) -> str:
    return re.search(rf"^{name}: (\S+)$", text, re.M).group(1)


def test_bootstrap_admin_without_a_terminal_prints_where_the_secrets_are_not_the_secrets(tmp_path):
    printed, kept = bootstrap(tmp_path, on_terminal=False)
    assert credential(kept, "password") not in printed and credential(kept, "api_key") not in printed
    assert str(tmp_path / "admin-credentials.txt") in printed


def test_bootstrap_admin_on_a_terminal_shows_the_password_once(tmp_path):
    printed, kept = bootstrap(tmp_path, on_terminal=True)
    assert credential(kept, "password") in printed and credential(kept, "api_key") in printed


# ---------------------------------------------------------------------------------------------------------
# DEBUG off: Hearth's own error pages, no URL patterns, static files still served


def test_an_unknown_page_gets_hearths_404_page_without_the_url_patterns(embedded_server):
    response = httpx.get(f"{embedded_server.base_url}/no-such-page/")
    assert response.status_code == 404
    assert "There is nothing here" in response.text and "/static/hearth/hearth.css" in response.text
    assert "URLconf" not in response.text and "api/docs" not in response.text


def test_static_files_are_served_with_debug_off(embedded_server):
    response = httpx.get(f"{embedded_server.base_url}/static/hearth/hearth.css")
    assert response.status_code == 200 and ".error-page" in response.text


def test_a_member_on_an_admin_page_gets_hearths_403_page(embedded_server):
    embedded_server.create_user(f"member-403-{os.getpid()}")
    client = login(embedded_server, f"member-403-{os.getpid()}")
    response = client.get("/users/")
    client.close()
    assert response.status_code == 403
    assert "You may not open this page" in response.text and "/static/hearth/hearth.css" in response.text


def test_a_form_without_its_csrf_token_gets_hearths_403_page(embedded_server):
    response = httpx.post(f"{embedded_server.base_url}/login/", data={"username": "admin", "password": "x"})
    assert response.status_code == 403
    assert "That form could not be verified" in response.text and "/static/hearth/hearth.css" in response.text


@pytest.mark.django_db
def test_the_500_page_renders_without_a_request_in_the_sites_look():
    from django.template.loader import render_to_string

    page = render_to_string("500.html")
    assert "Something went wrong on the server" in page and "/static/hearth/hearth.css" in page
    assert "Log out" not in page


# ---------------------------------------------------------------------------------------------------------
# Server file paths: admins see them; members and API clients see a file's name only


@pytest.fixture(scope="module")
def vanished_model(proxied_server, tiny_gguf):
    """A model whose file went missing after import: every job on it fails with an error naming the path."""
    folder = proxied_server.data_dir / "vanishing-folder"
    folder.mkdir()
    shutil.copy(tiny_gguf, folder / "vanished.gguf")
    proxied_server.manage("import_model", str(folder / "vanished.gguf"), "--name", "vanished")
    (folder / "vanished.gguf").unlink()
    member_key = proxied_server.create_user("path-member")
    failed = httpx.post(f"{proxied_server.base_url}/v1/chat/completions", timeout=120,
                        headers={"Authorization": f"Bearer {member_key}"},
                        json={"model": "vanished", "messages": [{"role": "user", "content": "Hi"}]})
    assert failed.status_code >= 400
    return str(folder), failed


def test_an_api_error_names_the_file_but_not_the_servers_folders(vanished_model):
    folder, failed = vanished_model
    message = failed.json()["error"]["message"]
    assert "vanished.gguf" in message and folder not in message


def test_a_member_sees_no_server_path_on_the_model_page_or_the_jobs_page(proxied_server, vanished_model):
    folder, _ = vanished_model
    with closing(browser_behind_tls(proxied_server, "path-member")) as member:
        model_page, jobs_page = member.get("/models/vanished/").text, member.get("/jobs/").text
    assert 'id="model-path"' not in model_page and folder not in model_page
    assert "vanished.gguf" in jobs_page and folder not in jobs_page


def test_an_admin_sees_the_server_paths(proxied_server, vanished_model):
    folder, _ = vanished_model
    with closing(browser_behind_tls(proxied_server)) as admin:
        model_page, jobs_page = admin.get("/models/vanished/").text, admin.get("/jobs/").text
    assert f'id="model-path">{folder}/vanished.gguf<' in model_page
    assert folder in jobs_page


def test_a_members_chat_socket_error_names_the_file_but_not_the_servers_folders(proxied_server, vanished_model):
    folder, _ = vanished_model
    with closing(browser_behind_tls(proxied_server, "path-member")) as member:
        socket_ = ChatSocket(proxied_server, SimpleNamespace(cookies={"sessionid": member.session_id}))
    socket_.send(type="send", conversation=None, model="vanished", content="Hi")
    assert socket_.receive()["type"] == "accepted"
    error = socket_.events_until_terminal()[-1]["event"]
    socket_.close()
    assert error["kind"] == "error" and "vanished.gguf" in error["message"] and folder not in error["message"]
