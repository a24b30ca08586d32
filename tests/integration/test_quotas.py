"""Token quotas in the process: admission reserves an estimate, the job's end settles it to the real tokens
(whoever ends it, once), the smallest quota wins, groups share a pool, refusals say which quota, how much and when,
and admins set quotas on a page that audits every change.

Personas: alice and bob are in the team group; carol is an admin; "w1" is a live worker."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from api.models import ApiKey
from inference import leases, quotas
from inference.engine.base import GenerationRequest
from inference.models import (
    AuditEvent,
    GenerationJob,
    JobStatus,
    QuotaCounter,
    QuotaPeriod,
    QuotaReservation,
    TokenQuota,
    UsageHour,
)
from inference.presence import get_presence
from inference.runner import _finish_row
from inference.services import embedding_start, generation_cancel, generation_start, model_import
from inference.usage import add_to_rollup
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tiny(tmp_path):
    return model_import(factories.build_tiny_gguf(tmp_path / "tiny.gguf", context_length=512), name="tiny")


@pytest.fixture
def team():
    return Group.objects.create(name="team")


@pytest.fixture
def alice(team):
    user = get_user_model().objects.create_user("alice", password="alice-password")
    user.groups.add(team)
    return user


@pytest.fixture
def bob(team):
    user = get_user_model().objects.create_user("bob", password="bob-password")
    user.groups.add(team)
    return user


@pytest.fixture
def carol():
    return get_user_model().objects.create_user("carol", password="carol-password", is_staff=True)


@pytest.fixture
def w1():
    get_presence().beat("w1")
    yield "w1"
    get_presence().leave("w1")


def ask(owner, model, *, max_tokens: int = 40, api_key=None, prompt: str = "x" * 40) -> GenerationJob:
    return generation_start(owner=owner, model=model, api_key=api_key,
                            request=GenerationRequest(prompt=prompt, max_tokens=max_tokens))


def counter(quota: TokenQuota) -> QuotaCounter:
    return QuotaCounter.objects.get(quota=quota)


def run_to_end(job: GenerationJob, worker: str = "w1", **fields) -> bool:
    """What a worker does: claim the job, then write its final row."""
    GenerationJob.objects.filter(id=job.id).update(status=JobStatus.RUNNING, worker=worker)
    return _finish_row(job, worker, **{"status": JobStatus.SUCCEEDED, "finish_reason": "stop", **fields})


def test_it_reserves_an_estimate_and_settles_it_to_the_real_tokens_when_the_job_ends(alice, tiny, w1):
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=10_000)
    job = ask(alice, tiny, max_tokens=40, prompt="x" * 40)
    assert counter(quota).reserved == 10 + 40  # 40 characters ÷ 4, plus max_tokens
    assert job.quota.remaining == 10_000 - 50

    assert run_to_end(job, prompt_tokens=12, completion_tokens=7)
    assert (counter(quota).used, counter(quota).reserved) == (19, 0)
    assert not QuotaReservation.objects.exists()
    assert quotas.settle(job.id, 1000) is False  # settled once, whatever calls again
    assert counter(quota).used == 19


def test_the_estimate_keeps_within_the_context_and_counts_every_choice(alice, tiny):
    assert quotas.estimate(tiny, GenerationRequest(prompt="x" * 4000, max_tokens=None)) == 512
    assert quotas.estimate(tiny, GenerationRequest(messages=[{"role": "user", "content": "x" * 80}], max_tokens=10,
                                                   n=3)) == 20 + 30


def test_it_refuses_a_request_past_the_quota_and_says_which_how_much_and_when(alice, tiny, w1):
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=1000)
    quotas.current_counters([quota], datetime.now(ZoneInfo("UTC")))
    QuotaCounter.objects.filter(quota=quota).update(used=1012)
    with pytest.raises(quotas.QuotaExceeded) as refused:
        ask(alice, tiny)
    assert re.fullmatch(r"Your daily quota of 1,000 tokens is used up \(1,012 used\); it resets at 00:00 "
                        r"\(in (\d+ h )?\d+ min\)\.", refused.value.message), refused.value.message
    assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
    assert refused.value.headers["x-ratelimit-limit-tokens"] == "1000"
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s", refused.value.headers["x-ratelimit-reset-tokens"])
    assert not GenerationJob.objects.exists()  # nothing queued, nothing reserved
    assert counter(quota).reserved == 0


@pytest.mark.parametrize(("period", "now", "expected"), [
    (QuotaPeriod.DAY, datetime(2026, 3, 4, 20, 48), "it resets at 00:00 (in 3 h 12 min)."),
    (QuotaPeriod.DAY, datetime(2026, 3, 4, 23, 59, 30), "it resets at 00:00 (in 1 min)."),
    (QuotaPeriod.MONTH, datetime(2026, 2, 27, 12, 0), "it resets on 1 March at 00:00 (in 1 day 12 h)."),
    (QuotaPeriod.MONTH, datetime(2026, 12, 31, 23, 0), "it resets at 00:00 (in 1 h)."),
])
def test_the_refusal_names_when_the_window_resets(alice, period, now, expected):
    now = now.replace(tzinfo=ZoneInfo("UTC"))
    quota = TokenQuota(user=alice, period=period, tokens=50_000)
    state = quotas.QuotaState(quota, 50_120, 0, quotas.window(period, now)[2])
    adjective = "daily" if period == QuotaPeriod.DAY else "monthly"
    assert state.message(now) == f"Your {adjective} quota of 50,000 tokens is used up (50,120 used); {expected}"


def test_the_smallest_quota_wins_and_a_groups_quota_is_its_members_shared_pool(alice, bob, team, tiny, w1):
    TokenQuota.objects.create(user=alice, period=QuotaPeriod.MONTH, tokens=1_000_000)
    pool = TokenQuota.objects.create(group=team, period=QuotaPeriod.DAY, tokens=100)
    job = ask(bob, tiny, max_tokens=40)  # bob's 50 come out of the team's 100
    assert job.quota.quota == pool and job.quota.remaining == 50
    run_to_end(job, prompt_tokens=60, completion_tokens=45)  # bob used 105 of the team's 100
    with pytest.raises(quotas.QuotaExceeded) as refused:
        ask(alice, tiny)
    assert refused.value.message.startswith("Your group team's daily quota of 100 tokens is used up (105 used)")


def test_an_api_keys_quota_applies_to_its_requests_only(alice, tiny, w1):
    key, _ = ApiKey.objects.issue(alice, "script")
    TokenQuota.objects.create(api_key=key, period=QuotaPeriod.DAY, tokens=10)
    with pytest.raises(quotas.QuotaExceeded) as refused:
        ask(alice, tiny, api_key=key)
        ask(alice, tiny, api_key=key)
    assert refused.value.message.startswith("This API key's daily quota of 10 tokens is used up (0 used, 50 reserved")
    assert ask(alice, tiny).quota is None  # the chat page's requests are not the key's


def test_a_cancelled_queued_job_gives_its_reservation_back(alice, tiny, w1):
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=1000)
    job = ask(alice, tiny)
    generation_cancel(job)
    assert (counter(quota).used, counter(quota).reserved) == (0, 0)
    assert UsageHour.objects.get().requests == 1


def test_a_job_taken_over_by_another_worker_is_settled_once_by_the_one_that_ends_it(alice, tiny, w1):
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=1000)
    job = ask(alice, tiny)
    GenerationJob.objects.filter(id=job.id).update(status=JobStatus.RUNNING, worker="ghost")
    GenerationJob.objects.filter(id=job.id).update(status=JobStatus.QUEUED, worker="")  # the reaper requeues it
    assert run_to_end(job, "w1", prompt_tokens=10, completion_tokens=30)
    assert not _finish_row(job, "ghost", status=JobStatus.SUCCEEDED, prompt_tokens=10, completion_tokens=30)
    assert (counter(quota).used, counter(quota).reserved) == (40, 0)
    assert UsageHour.objects.get().completion_tokens == 30


def test_a_job_failed_by_the_reaper_settles_its_reservation(alice, tiny):
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=1000)
    get_presence().beat("w1")
    job = ask(alice, tiny)
    get_presence().leave("w1")
    GenerationJob.objects.filter(id=job.id).update(status=JobStatus.RUNNING, worker="ghost",
                                                   lease_expires_at=datetime(2020, 1, 1, tzinfo=ZoneInfo("UTC")))
    assert leases.Reaper().run() == (0, 1)
    assert (counter(quota).used, counter(quota).reserved) == (0, 0)
    assert UsageHour.objects.get().failures == 1


def test_the_reservation_of_a_job_that_vanished_is_swept(alice, tiny, w1):
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=1000)
    job = ask(alice, tiny)
    GenerationJob.objects.filter(id=job.id).delete()
    assert quotas.sweep(older_than=60) == 0  # young reservations are left alone
    assert quotas.sweep(older_than=0) == 1
    assert (counter(quota).used, counter(quota).reserved) == (0, 0)


def test_a_new_window_starts_from_what_the_rollups_already_count(alice, bob, team, tiny, w1):
    now = datetime.now(ZoneInfo("UTC"))
    for user, tokens in ((alice, 30), (bob, 12)):
        add_to_rollup(now, user.pk, 0, "tiny", failed=False, prompt_tokens=tokens, completion_tokens=0, ttft=0.1,
                      tps=20)
    add_to_rollup(now - timedelta(days=40), alice.pk, 0, "tiny", failed=False, prompt_tokens=999,
                  completion_tokens=0, ttft=None, tps=None)
    pool = TokenQuota.objects.create(group=team, period=QuotaPeriod.MONTH, tokens=1000)
    assert [(state.used, state.reserved) for state in quotas.states(alice)] == [(42, 0)]
    assert counter(pool).used == 42


def test_the_concurrent_jobs_limit_is_checked_when_the_job_is_created(alice, tiny, w1):
    key, _ = ApiKey.objects.issue(alice, "script")
    ApiKey.objects.filter(pk=key.pk).update(max_concurrent_jobs=2)
    ask(alice, tiny, api_key=key)
    ask(alice, tiny, api_key=key)
    with pytest.raises(quotas.ConcurrencyLimited) as refused:
        ask(alice, tiny, api_key=key)
    assert refused.value.status == 429 and refused.value.retry_after == 1
    assert GenerationJob.objects.count() == 2


def test_embeddings_count_against_the_quotas_and_the_concurrent_jobs_limit(alice, tiny, w1):
    key, _ = ApiKey.objects.issue(alice, "script")
    ApiKey.objects.filter(pk=key.pk).update(max_concurrent_jobs=1)
    quota = TokenQuota.objects.create(user=alice, period=QuotaPeriod.DAY, tokens=30)
    job = embedding_start(owner=alice, model=tiny, inputs=["x" * 40, "y" * 39], api_key=key)
    assert counter(quota).reserved == 20  # 80 characters ÷ 4
    with pytest.raises(quotas.ConcurrencyLimited):
        embedding_start(owner=alice, model=tiny, inputs=["z"], api_key=key)
    assert run_to_end(job, prompt_tokens=31)
    with pytest.raises(quotas.QuotaExceeded):
        embedding_start(owner=alice, model=tiny, inputs=["z"], api_key=key)
    assert (counter(quota).used, counter(quota).reserved) == (31, 0)


# ---------------------------------------------------------------------------------------------------------
# The API's answer (OpenAI's error shape and headers; Anthropic's path in its own shape)


def test_the_api_answers_a_used_up_quota_with_429_retry_after_and_rate_limit_headers(alice, tiny, w1):
    key, secret = ApiKey.objects.issue(alice, "script")
    quota = TokenQuota.objects.create(api_key=key, period=QuotaPeriod.MONTH, tokens=500)
    quotas.current_counters([quota], datetime.now(ZoneInfo("UTC")))
    QuotaCounter.objects.filter(quota=quota).update(used=500)
    client = Client()
    response = client.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "quota_exceeded"
    assert error["message"].startswith("This API key's monthly quota of 500 tokens is used up (500 used); it resets")
    assert int(response["Retry-After"]) >= 1
    assert response["x-ratelimit-limit-tokens"] == "500" and response["x-ratelimit-remaining-tokens"] == "0"
    assert response["x-ratelimit-reset-tokens"].endswith("s")

    anthropic = client.post("/v1/messages", {"model": "tiny", "max_tokens": 10,
                                             "messages": [{"role": "user", "content": "hi"}]},
                            content_type="application/json", HTTP_X_API_KEY=secret)
    assert anthropic.status_code == 429
    assert anthropic.json()["type"] == "error" and "monthly quota" in anthropic.json()["error"]["message"]
    assert anthropic["x-ratelimit-remaining-tokens"] == "0"


# ---------------------------------------------------------------------------------------------------------
# The quotas page: admins only, every change audited


def test_admins_set_change_and_remove_quotas_on_the_quotas_page_and_each_change_is_audited(alice, team, carol):
    client = Client()
    client.force_login(carol)
    assert client.get("/quotas/").status_code == 200
    client.post("/quotas/", {"action": "set", "subject": f"user:{alice.pk}", "period": "day", "tokens": "50000"})
    client.post("/quotas/", {"action": "set", "subject": f"group:{team.pk}", "period": "month", "tokens": "900000"})
    client.post("/quotas/", {"action": "set", "subject": f"user:{alice.pk}", "period": "day", "tokens": "60000"})
    assert sorted(TokenQuota.objects.values_list("period", "tokens")) == [("day", 60_000), ("month", 900_000)]
    page = client.get("/quotas/").content.decode()
    assert "user alice" in page and "group team" in page and "60,000" in page

    quota = TokenQuota.objects.get(user=alice)
    client.post("/quotas/", {"action": "delete", "quota": str(quota.pk)})
    assert not TokenQuota.objects.filter(user=alice).exists()
    audit = list(AuditEvent.objects.order_by("at", "id").values_list("action", "target", "details"))
    assert audit == [
        ("quota.set", "user alice", {"period": "day", "tokens": 50_000, "previous": None}),
        ("quota.set", "group team", {"period": "month", "tokens": 900_000, "previous": None}),
        ("quota.set", "user alice", {"period": "day", "tokens": 60_000, "previous": 50_000}),
        ("quota.delete", "user alice", {"period": "day", "tokens": 60_000}),
    ]


def test_members_may_not_see_or_set_quotas(alice):
    client = Client()
    client.force_login(alice)
    assert client.get("/quotas/").status_code == 403
    assert client.post("/quotas/", {"action": "set", "subject": f"user:{alice.pk}", "period": "day",
                                    "tokens": "1"}).status_code == 403
    assert not TokenQuota.objects.exists()


def test_a_quota_must_be_a_positive_whole_number_for_someone(carol):
    client = Client()
    client.force_login(carol)
    page = client.post("/quotas/", {"action": "set", "subject": "user:999", "period": "day", "tokens": "5"},
                       follow=True).content.decode()
    assert "no longer exists" in page
    page = client.post("/quotas/", {"action": "set", "subject": f"user:{carol.pk}", "period": "day", "tokens": "-5"},
                       follow=True).content.decode()
    assert "at least 1" in page
    assert not TokenQuota.objects.exists() and not AuditEvent.objects.exists()
