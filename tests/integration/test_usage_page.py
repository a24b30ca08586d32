"""The usage page: charts and CSV from the hourly rollups, for admins (everyone, filtered) and members (their own),
bounded with a year of data: 100,000 jobs keep the page under a fixed number of queries and well under a second.

Personas: carol is an admin; alice and bob are members of the team group; dave is in no group."""

from __future__ import annotations

import csv
import io
import json
import random
import time
from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from api.models import ApiKey
from inference.models import TPS_EDGES, TTFT_EDGES, GenerationJob, JobStatus, UsageDay, UsageHour
from inference.usage import add_to_rollup, median_from, rebuild

pytestmark = pytest.mark.django_db

JOBS = 100_000
MAX_QUERIES = 16
MODELS = ("tiny", "demo", "big")


@pytest.fixture
def people():
    User = get_user_model()
    team = Group.objects.create(name="team")
    carol = User.objects.create_user("carol", password="carol-password", is_staff=True)
    alice = User.objects.create_user("alice", password="alice-password")
    bob = User.objects.create_user("bob", password="bob-password")
    dave = User.objects.create_user("dave", password="dave-password")
    alice.groups.add(team)
    bob.groups.add(team)
    return {"carol": carol, "alice": alice, "bob": bob, "dave": dave, "team": team}


def job(owner, model: str, finished_at: datetime, *, key=None, prompt: int = 10, completion: int = 5,
        ttft: float | None = 0.3, tps: float | None = 40.0, status: str = JobStatus.SUCCEEDED) -> GenerationJob:
    return GenerationJob(owner=owner, model_name=model, api_key=key, status=status, prompt_tokens=prompt,
                         completion_tokens=completion, time_to_first_token=ttft, tokens_per_second=tps,
                         finished_at=finished_at, request={})


def get(client: Client, path: str = "/usage/", **params) -> str:
    response = client.get(path, params)
    assert response.status_code == 200
    return response.content.decode()


def chart_data(page: str) -> dict:
    start = page.index('<script id="usage-data" type="application/json">') + len(
        '<script id="usage-data" type="application/json">')
    return json.loads(page[start:page.index("</script>", start)])


def test_it_counts_tokens_per_day_per_user_group_model_and_key_and_members_see_only_their_own(people):
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    key, _ = ApiKey.objects.issue(alice, "notebook")
    today = timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)
    GenerationJob.objects.bulk_create([
        job(alice, "tiny", today, key=key, prompt=100, completion=20),
        job(alice, "demo", today - timedelta(days=1), prompt=50, completion=5, ttft=2.0, tps=5),
        job(bob, "tiny", today, prompt=7, completion=3, status=JobStatus.FAILED, ttft=None, tps=None),
        job(dave, "tiny", today, prompt=1000, completion=1000),
    ])
    rebuild()
    admin = Client()
    admin.force_login(people["carol"])
    data = chart_data(get(admin))
    assert data["days"][-1] == today.date().isoformat() and len(data["days"]) == 30
    totals = {kind: {line["label"]: sum(line["values"]) for line in data["tokens"][kind]} for kind in data["tokens"]}
    assert totals["user"] == {"alice": 175, "bob": 10, "dave": 2000}
    assert totals["group"] == {"team": 185}
    assert totals["model"] == {"tiny": 2130, "demo": 55}
    assert totals["key"] == {"notebook (" + key.prefix + ")": 120, "chat pages": 2065}
    assert data["requests"][-1] == 3 and data["failures"][-1] == 1 and data["requests"][-2] == 1
    assert sum(data["hours"]) == 4 and data["hours"][12] == 4

    team = chart_data(get(admin, group=people["team"].pk))
    assert {line["label"] for line in team["tokens"]["user"]} == {"alice", "bob"}

    member = Client()
    member.force_login(alice)
    own = chart_data(get(member, user=dave.pk, group=people["team"].pk))  # a member's filters cannot widen it
    assert {line["label"]: sum(line["values"]) for line in own["tokens"]["user"]} == {"alice": 175}
    rows = list(csv.DictReader(io.StringIO(get(member, "/usage/export.csv"))))
    assert [(row["day"], row["model"], row["api_key"], row["total_tokens"]) for row in rows] == [
        ((today - timedelta(days=1)).date().isoformat(), "demo", "", "55"),
        (today.date().isoformat(), "tiny", f"notebook ({key.prefix})", "120"),
    ]


def test_a_job_that_ends_is_added_to_its_hours_rollup_as_the_rebuild_would_count_it(people):
    alice = people["alice"]
    now = timezone.now()
    jobs = [job(alice, "tiny", now, ttft=0.03, tps=3.0), job(alice, "tiny", now, ttft=0.7, tps=300.0),
            job(alice, "tiny", now, status=JobStatus.FAILED, ttft=None, tps=None, completion=0)]
    GenerationJob.objects.bulk_create(jobs)
    for one in jobs:
        add_to_rollup(one.finished_at, alice.pk, 0, "tiny", failed=one.status == JobStatus.FAILED,
                      prompt_tokens=one.prompt_tokens, completion_tokens=one.completion_tokens,
                      ttft=one.time_to_first_token, tps=one.tokens_per_second)
    tables = {model: [field.name for field in model._meta.fields if field.name != "id"]
              for model in (UsageHour, UsageDay)}
    incremental = {model: list(model.objects.values(*fields)) for model, fields in tables.items()}
    rebuild()
    assert {model: list(model.objects.values(*fields)) for model, fields in tables.items()} == incremental
    row = UsageDay.objects.get()
    assert (row.requests, row.failures, row.ttft_0, row.ttft_4, row.tps_2, row.tps_9) == (3, 1, 1, 1, 1, 1)
    assert UsageHour.objects.get().requests == 3


@pytest.mark.parametrize(("counts", "edges", "expected"), [
    ([0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0], TTFT_EDGES, (0.2, 0.4)),  # all in [0.2, 0.4)
    ([0] * 5 + [3, 3] + [0] * 5, TPS_EDGES, (32, 32)),  # half in [16, 32), half in [32, 64)
    ([0] * 12, TPS_EDGES, None),
])
def test_medians_come_from_the_rollups_histograms(counts, edges, expected):
    median = median_from(counts, edges)
    assert median == expected if expected is None else expected[0] <= median <= expected[1]


def test_a_year_of_100000_jobs_keeps_the_page_under_a_fixed_query_count_and_well_under_a_second(
        people, django_assert_max_num_queries):
    users = [people[name] for name in ("alice", "bob", "dave", "carol")]
    keys = [None, ApiKey.objects.issue(people["alice"], "a")[0], ApiKey.objects.issue(people["bob"], "b")[0]]
    rng = random.Random(15)
    end = timezone.now()
    step = timedelta(days=364) / JOBS  # all within the last 365 calendar days
    for first in range(0, JOBS, 20_000):
        GenerationJob.objects.bulk_create([
            job(rng.choice(users), rng.choice(MODELS), end - step * i, key=rng.choice(keys),
                prompt=rng.randint(10, 2000), completion=rng.randint(1, 800), ttft=rng.lognormvariate(-1, 1),
                tps=rng.lognormvariate(3, 0.5),
                status=JobStatus.FAILED if rng.random() < 0.02 else JobStatus.SUCCEEDED)
            for i in range(first, first + 20_000)], batch_size=5000)
    started = time.perf_counter()
    call_command("rebuild_usage", stdout=io.StringIO())
    rebuilt = time.perf_counter() - started
    admin = Client()
    admin.force_login(people["carol"])
    year = {"start": (timezone.localdate() - timedelta(days=364)).isoformat(), "end": timezone.localdate().isoformat()}
    get(admin, **year)  # warm: templates, the session
    timings = []
    for _ in range(3):
        with django_assert_max_num_queries(MAX_QUERIES):
            started = time.perf_counter()
            page = get(admin, **year)
            timings.append(time.perf_counter() - started)
    data = chart_data(page)
    assert sum(data["requests"]) == JOBS
    csv_started = time.perf_counter()
    rows = get(admin, "/usage/export.csv", **year).count("\n") - 1
    csv_seconds = time.perf_counter() - csv_started
    print(f"\n100,000 jobs: {UsageHour.objects.count()} hourly and {UsageDay.objects.count()} daily rollup rows, "
          f"rebuilt in {rebuilt:.2f} s; a year's page in "
          f"{min(timings):.3f}-{max(timings):.3f} s; CSV of {rows} rows in {csv_seconds:.3f} s")
    assert min(timings) < 0.5
    assert max(timings) < 1.0
