"""Token quotas and usage against a real embedded server (its worker, the tiny model): the answer carries the
binding quota's x-ratelimit-*-tokens headers, the job's end settles the reservation to its real tokens and counts
it in the usage rollups, and the chat page is told in words when a quota is used up."""

from __future__ import annotations

import json
import re
import secrets
import time

import httpx
import pytest

from tests import servers
from tests.integration.chat_client import ChatSocket, login


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gguf):
    hearth = servers.start_embedded(tmp_path_factory.mktemp("quotas"), {"tiny": tiny_gguf})
    yield hearth
    hearth.stop()


def member(server) -> tuple[str, str]:
    username = f"member-{secrets.token_hex(3)}"
    return username, server.create_user(username)


def shell(server, code: str):
    """Run Django code in the server's database; the value of its last line `result = ...` comes back as JSON."""
    done = server.manage("shell", "-c", "import json\n" + code + "\nprint(json.dumps(result, default=str))")
    return json.loads(done.stdout.strip().splitlines()[-1])


def set_quota(server, username: str, period: str, tokens: int, used: int | None = None) -> None:
    shell(server, (
        "from django.contrib.auth import get_user_model\n"
        "from django.utils import timezone\n"
        "from inference import quotas\n"
        "from inference.models import QuotaCounter, TokenQuota\n"
        f"user = get_user_model().objects.get(username={username!r})\n"
        f"quota = TokenQuota.objects.create(user=user, period={period!r}, tokens={tokens})\n"
        "quotas.current_counters([quota], timezone.now())\n"
        + (f"QuotaCounter.objects.filter(quota=quota).update(used={used})\n" if used is not None else "")
        + "result = quota.pk"))


def counter(server, username: str) -> dict:
    return shell(server, (
        "from inference.models import QuotaCounter\n"
        f"result = QuotaCounter.objects.filter(quota__user__username={username!r}).values('used', 'reserved')[0]"))


def test_an_answer_carries_the_quota_headers_and_its_end_settles_the_real_tokens_and_counts_its_usage(server):
    username, key = member(server)
    set_quota(server, username, "day", 100_000)
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-ratelimit-limit-tokens"] == "100000"
    reserved = 100_000 - int(response.headers["x-ratelimit-remaining-tokens"])
    assert reserved == 1 + 5  # "hi" ≈ 1 token + max_tokens
    assert re.fullmatch(r"\d+h\d+m\d+s|\d+m\d+s|\d+s", response.headers["x-ratelimit-reset-tokens"])
    total = response.json()["usage"]["total_tokens"]
    deadline = time.monotonic() + 20
    while counter(server, username)["reserved"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert counter(server, username) == {"used": total, "reserved": 0}

    session = login(server, username)
    page = session.get("/usage/").text
    data = json.loads(re.search(r'<script id="usage-data" type="application/json">(.*?)</script>', page).group(1))
    assert {line["label"]: sum(line["values"]) for line in data["tokens"]["user"]} == {username: total}
    assert "of 100,000 tokens used" in page


def test_the_chat_page_is_told_in_words_that_a_quota_is_used_up(server):
    username, _ = member(server)
    set_quota(server, username, "day", 50_000, used=50_120)
    socket = ChatSocket(server, login(server, username))
    try:
        socket.send(type="send", conversation=None, model="tiny", content="hello")
        message = socket.receive(timeout=30)
    finally:
        socket.close()
    assert message["type"] == "error" and message["code"] == "quota_exceeded"
    assert re.fullmatch(r"Your daily quota of 50,000 tokens is used up \(50,120 used\); it resets at 00:00 "
                        r"\(in (\d+ h )?\d+ min\)\.", message["message"]), message["message"]


def test_the_anthropic_and_ollama_dialects_refuse_with_the_same_quota_message(server):
    username, key = member(server)
    set_quota(server, username, "month", 100, used=100)
    headers = {"Authorization": f"Bearer {key}"}
    anthropic = httpx.post(f"{server.base_url}/v1/messages", headers=headers, timeout=30, json={
        "model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status_code == 429
    assert anthropic.json()["error"]["message"].startswith("Your monthly quota of 100 tokens is used up (100 used)")
    assert anthropic.headers["retry-after"] and anthropic.headers["x-ratelimit-remaining-tokens"] == "0"
    ollama = httpx.post(f"{server.base_url}/api/chat", headers=headers, timeout=30, json={
        "model": "tiny", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    assert ollama.status_code == 429
    assert ollama.json()["error"].startswith("Your monthly quota of 100 tokens is used up")
