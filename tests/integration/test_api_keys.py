"""API keys against a real embedded server: per-key limits (429), usage, last use, revocation, the keys page,
and the administrators' endpoint (403 for members)."""

from __future__ import annotations

import re
import secrets
import time

import httpx
import openai
import pytest

from tests.conftest import openai_client
from tests.integration.chat_client import login


def new_member(server, prefix: str = "member") -> tuple[str, str]:
    username = f"{prefix}-{secrets.token_hex(3)}"
    return username, server.create_user(username)


def key_prefix(key: str) -> str:
    return key.split("_")[1]


def set_limits(server, key: str, *, rpm: int | None = None, concurrent: int | None = None) -> None:
    server.manage("shell", "-c", (
        "from api.models import ApiKey; "
        f"ApiKey.objects.filter(prefix={key_prefix(key)!r}).update(requests_per_minute={rpm}, "
        f"max_concurrent_jobs={concurrent})"))


def get(server, path: str, key: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def admin_key_info(server, key: str) -> dict:
    listing = get(server, "/v1/admin/api_keys", server.api_key).json()
    return next(k for k in listing["data"] if k["prefix"].startswith(f"hth_{key_prefix(key)}_"))


def csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(response.headers["Retry-After"]) <= 61


def test_it_refuses_requests_over_a_keys_per_minute_limit_with_429_and_retry_after(embedded_server):
    _, key = new_member(embedded_server)
    set_limits(embedded_server, key, rpm=3)
    statuses = [get(embedded_server, "/v1/models", key).status_code for _ in range(3)]
    over = get(embedded_server, "/v1/models", key)
    if over.status_code == 200:  # the minute turned over between the requests: the next three fill the new one
        statuses = [get(embedded_server, "/v1/models", key).status_code for _ in range(2)]
        over = get(embedded_server, "/v1/models", key)
    assert set(statuses) == {200}
    assert_rate_limited(over)
    with pytest.raises(openai.RateLimitError):
        openai_client(embedded_server, key).models.list()
    assert get(embedded_server, "/v1/models", embedded_server.api_key).status_code == 200  # other keys unaffected


def test_it_refuses_a_generation_over_a_keys_concurrency_limit(embedded_server):
    _, key = new_member(embedded_server)
    set_limits(embedded_server, key, concurrent=1)
    client = openai_client(embedded_server, key)
    long_running = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Tell me a very long story."}], max_tokens=2000,
        stream=True, temperature=1.0, seed=3)
    next(iter(long_running))  # the first job runs now
    second = httpx.post(f"{embedded_server.base_url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"}, timeout=30,
                        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    long_running.close()  # a client that goes away cancels its job
    assert_rate_limited(second)
    assert "limit is 1" in second.json()["error"]["message"]
    deadline = time.monotonic() + 30
    while True:
        third = httpx.post(f"{embedded_server.base_url}/v1/chat/completions",
                           headers={"Authorization": f"Bearer {key}"}, timeout=30,
                           json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        if third.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert third.status_code == 200, third.text


def test_it_sums_each_keys_token_usage_and_records_its_last_use(embedded_server):
    _, key = new_member(embedded_server)
    client = openai_client(embedded_server, key)
    before = admin_key_info(embedded_server, key)
    assert before["usage"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert before["last_used"] is None
    first = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=5, temperature=0)
    second = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=7, temperature=0)
    after = admin_key_info(embedded_server, key)
    assert after["usage"]["requests"] == 2
    assert after["usage"]["prompt_tokens"] == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert after["usage"]["completion_tokens"] == first.usage.completion_tokens + second.usage.completion_tokens == 12
    assert abs(after["last_used"] - time.time()) < 120


def test_it_shows_a_member_their_own_keys_with_usage_and_not_others(embedded_server):
    username, key = new_member(embedded_server)
    _, other_key = new_member(embedded_server, "other")
    completion = openai_client(embedded_server, key).completions.create(model="tiny", prompt="Hi", max_tokens=4,
                                                                          temperature=0)
    session = login(embedded_server, username)
    page = session.get("/keys/")
    assert page.status_code == 200
    assert f"hth_{key_prefix(key)}_" in page.text
    assert key_prefix(other_key) not in page.text
    assert key.split("_", 2)[2] not in page.text  # the secret is never shown again
    row = re.search(rf'hth_{key_prefix(key)}_.*?</tr>', page.text, re.S).group(0)
    assert f'class="usage-prompt">{completion.usage.prompt_tokens}<' in row
    assert 'class="usage-completion">4<' in row


def test_it_creates_a_key_on_the_keys_page_shown_once_and_revokes_it(embedded_server):
    username, _ = new_member(embedded_server)
    session = login(embedded_server, username)
    page = session.get("/keys/")
    created = session.post("/keys/new/", data={"name": "my editor", "csrfmiddlewaretoken": csrf(page)},
                           headers={"Referer": f"{embedded_server.base_url}/keys/"})
    shown = re.search(r'<code id="new-key" class="secret">(hth_[^<]+)</code>', created.text)
    assert shown, created.text[:2000]
    new_key = shown.group(1)
    assert "my editor" in created.text
    assert new_key not in session.get("/keys/").text  # shown once
    assert get(embedded_server, "/v1/models", new_key).status_code == 200

    key_id = re.search(rf'data-key-id="(\d+)">\s*<td><code>hth_{key_prefix(new_key)}_', created.text).group(1)
    page = session.get("/keys/")
    revoked = session.post(f"/keys/{key_id}/revoke/", data={"csrfmiddlewaretoken": csrf(page)},
                           headers={"Referer": f"{embedded_server.base_url}/keys/"})
    assert "revoked" in revoked.text
    refused = get(embedded_server, "/v1/models", new_key)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_it_does_not_let_a_member_revoke_someone_elses_key(embedded_server):
    username, _ = new_member(embedded_server)
    _, other_key = new_member(embedded_server, "other")
    other_id = admin_key_info(embedded_server, other_key)["id"]
    session = login(embedded_server, username)
    page = session.get("/keys/")
    response = session.post(f"/keys/{other_id}/revoke/", data={"csrfmiddlewaretoken": csrf(page)},
                            headers={"Referer": f"{embedded_server.base_url}/keys/"})
    assert response.status_code == 404
    assert get(embedded_server, "/v1/models", other_key).status_code == 200


def test_it_sends_a_visitor_of_the_keys_page_to_the_login(embedded_server):
    response = httpx.get(f"{embedded_server.base_url}/keys/", follow_redirects=False)
    assert response.status_code == 302 and "/login/" in response.headers["location"]


def test_it_answers_403_to_a_member_calling_an_admin_endpoint(embedded_server):
    _, key = new_member(embedded_server)
    response = get(embedded_server, "/v1/admin/api_keys", key)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert response.json()["error"]["code"] == "insufficient_permissions"
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(embedded_server, key).get("/admin/api_keys", cast_to=object)
    assert get(embedded_server, "/v1/admin/api_keys", embedded_server.api_key).status_code == 200


def test_it_lets_an_admin_revoke_any_key_through_the_api(embedded_server):
    _, key = new_member(embedded_server)
    info = admin_key_info(embedded_server, key)
    response = httpx.post(f"{embedded_server.base_url}/v1/admin/api_keys/{info['id']}/revoke",
                          headers={"Authorization": f"Bearer {embedded_server.api_key}"}, timeout=30)
    assert response.status_code == 200 and response.json()["revoked"]
    assert get(embedded_server, "/v1/models", key).status_code == 401


def test_it_stops_a_deactivated_users_keys_at_once(embedded_server):
    username, key = new_member(embedded_server)
    assert get(embedded_server, "/v1/models", key).status_code == 200
    embedded_server.manage("shell", "-c", (
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.filter(username={username!r}).update(is_active=False)"))
    assert get(embedded_server, "/v1/models", key).status_code == 401


def test_it_lets_an_admin_issue_limit_and_revoke_keys_in_the_django_admin(embedded_server):
    username, key = new_member(embedded_server)
    session = login(embedded_server)  # the admin
    listing = session.get("/admin/api/apikey/")
    assert listing.status_code == 200 and f"{key_prefix(key)}" in listing.text
    page = session.get("/admin/api/apikey/add/")
    assert page.status_code == 200
    owner_id = re.search(rf'<option value="(\d+)">{re.escape(username)}</option>', page.text).group(1)
    added = session.post("/admin/api/apikey/add/", data={
        "csrfmiddlewaretoken": csrf(page), "owner": owner_id, "name": "from admin", "requests_per_minute": "7",
        "max_concurrent_jobs": "2", "_save": "Save"}, headers={"Referer": f"{embedded_server.base_url}/admin/"})
    shown = re.search(r"<code>(hth_[0-9a-f]+_[^<]+)</code>", added.text)
    assert shown, added.text[:3000]
    issued = shown.group(1)
    assert get(embedded_server, "/v1/models", issued).status_code == 200
    info = admin_key_info(embedded_server, issued)
    assert (info["name"], info["requests_per_minute"], info["max_concurrent_jobs"]) == ("from admin", 7, 2)

    listing = session.get("/admin/api/apikey/")
    revoked = session.post("/admin/api/apikey/", data={
        "csrfmiddlewaretoken": csrf(listing), "action": "revoke_keys", "_selected_action": [str(info["id"])],
        "index": "0"}, headers={"Referer": f"{embedded_server.base_url}/admin/"})
    assert revoked.status_code == 200
    assert get(embedded_server, "/v1/models", issued).status_code == 401
