"""Usage: rollups of ended jobs, written when a job ends, and the reads of the usage page.

`job_ended(job_id)` is called in the transaction that writes a job's final row (runner, reaper, cancel): it
settles the job's quota reservation (inference/quotas.py) and counts the job in two rollups, one upsert each:
UsageHour (per hour, user, key, model: the busiest hours) and UsageDay (per day in TIME_ZONE, user, key, model,
with fixed log-bucket histograms of time to first token and tokens/s, so medians come from the rollups). The usage
page, its CSV and the quotas' windows read only the rollups: a year is at most 366 daily rows per user, key and
model, whatever the number of jobs. `manage.py rebuild_usage` recomputes both from the job table.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import connection
from django.db.models import Sum
from django.db.models.fields.json import KT
from django.utils import timezone

from inference import quotas
from inference.models import (
    BUCKETS,
    TPS_EDGES,
    TTFT_EDGES,
    GenerationJob,
    JobStatus,
    UsageDay,
    UsageHour,
)

TTFT_COLUMNS = [f"ttft_{i}" for i in range(BUCKETS)]
TPS_COLUMNS = [f"tps_{i}" for i in range(BUCKETS)]
COUNTS = ["requests", "failures", "prompt_tokens", "completion_tokens"]


def bucket(value: float | None, edges) -> int | None:
    return None if value is None else bisect.bisect_right(edges, value)


def job_ended(job_id) -> None:
    """Settle the job's reservation and count it in its hour's rollup. Call in the transaction that wrote its final
    row (so neither happens twice, nor without the other)."""
    row = (GenerationJob.objects.filter(id=job_id)
           .annotate(residency=KT("request__residency"))
           .values("owner_id", "api_key_id", "model_name", "status", "prompt_tokens", "completion_tokens",
                   "time_to_first_token", "tokens_per_second", "finished_at", "residency").first())
    if row is None:
        return
    tokens = row["prompt_tokens"] + row["completion_tokens"]
    quotas.settle(job_id, tokens)
    if row["residency"]:  # a model load or unload is no request for tokens
        return
    add_to_rollup(row["finished_at"] or timezone.now(), row["owner_id"], row["api_key_id"] or 0, row["model_name"],
                  failed=row["status"] == JobStatus.FAILED, prompt_tokens=row["prompt_tokens"],
                  completion_tokens=row["completion_tokens"], ttft=row["time_to_first_token"],
                  tps=row["tokens_per_second"])


def _hour_fields(moment: datetime) -> tuple[datetime, date, int]:
    hour = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    local = timezone.localtime(hour)
    return hour, local.date(), local.hour


def _upsert(model, keys: dict, values: dict) -> None:
    """INSERT the row of `keys`, or add `values` to the one there (one statement, PostgreSQL and SQLite alike)."""
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    unique = model._meta.constraints[0].fields
    columns = [*keys, *values]
    updates = ", ".join(f"{quote(name)} = {table}.{quote(name)} + excluded.{quote(name)}" for name in values)
    conflict = ", ".join(quote(model._meta.get_field(name).column) for name in unique)
    sql = (f"INSERT INTO {table} ({', '.join(quote(name) for name in columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))}) ON CONFLICT ({conflict}) DO UPDATE SET {updates}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*keys.values(), *values.values()])


def _insert_many(model, columns: list[str], rows: list[tuple]) -> None:
    """Plain rows in one executemany (a year of rollups is ~100,000 rows: Django's bulk_create is 20 times
    slower)."""
    quote = connection.ops.quote_name
    sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(name) for name in columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))})")
    with connection.cursor() as cursor:
        for first in range(0, len(rows), 10_000):
            cursor.executemany(sql, rows[first:first + 10_000])


def add_to_rollup(moment: datetime, user_id: int, api_key_id: int, model_name: str, *, failed: bool,
                  prompt_tokens: int, completion_tokens: int, ttft: float | None, tps: float | None) -> None:
    """Count one ended job in its hour's and its day's rows (two upserts)."""
    hour, day, hour_of_day = _hour_fields(moment)
    counts = {"requests": 1, "failures": int(failed), "prompt_tokens": prompt_tokens,
              "completion_tokens": completion_tokens}
    who = {"user_id": user_id, "api_key_id": api_key_id, "model_name": model_name}
    _upsert(UsageHour, {"hour": connection.ops.adapt_datetimefield_value(hour), "day": day,
                        "hour_of_day": hour_of_day, **who}, counts)
    speed = dict.fromkeys(TTFT_COLUMNS + TPS_COLUMNS, 0)
    ttft_bucket, tps_bucket = bucket(ttft, TTFT_EDGES), bucket(tps, TPS_EDGES)
    if ttft_bucket is not None:
        speed[TTFT_COLUMNS[ttft_bucket]] = 1
    if tps_bucket is not None:
        speed[TPS_COLUMNS[tps_bucket]] = 1
    _upsert(UsageDay, {"day": day, **who}, {**counts, **speed})


def rebuild(since: datetime | None = None) -> int:
    """Recompute the rollups from the jobs (from the day of `since` on; all when None), in one pass over the jobs.
    Returns the hourly rows written."""
    jobs = GenerationJob.objects.filter(finished_at__isnull=False).exclude(request__has_key="residency")
    hourly, daily = UsageHour.objects.all(), UsageDay.objects.all()
    if since is not None:
        first_day = timezone.localtime(since).date()
        since = timezone.make_aware(datetime.combine(first_day, datetime.min.time()))
        jobs, hourly, daily = (jobs.filter(finished_at__gte=since), hourly.filter(day__gte=first_day),
                               daily.filter(day__gte=first_day))
    hours: dict[tuple, list[int]] = {}
    days: dict[tuple, list[int]] = {}
    fields = ("finished_at", "owner_id", "api_key_id", "model_name", "status", "prompt_tokens",
              "completion_tokens", "time_to_first_token", "tokens_per_second")
    seen: dict[datetime, tuple[datetime, date, int]] = {}
    for at, user_id, key_id, model, status, prompt, completion, ttft, tps in jobs.order_by().values_list(
            *fields).iterator(chunk_size=10_000):
        start = at.replace(minute=0, second=0, microsecond=0)
        hour = seen.get(start) or seen.setdefault(start, _hour_fields(start))
        counts = (1, int(status == JobStatus.FAILED), prompt, completion)
        row = hours.setdefault((*hour, user_id, key_id or 0, model), [0, 0, 0, 0])
        for i, value in enumerate(counts):
            row[i] += value
        row = days.setdefault((hour[1], user_id, key_id or 0, model), [0] * (4 + 2 * BUCKETS))
        for i, value in enumerate(counts):
            row[i] += value
        if ttft is not None:
            row[4 + bucket(ttft, TTFT_EDGES)] += 1
        if tps is not None:
            row[4 + BUCKETS + bucket(tps, TPS_EDGES)] += 1
    hourly.delete()
    daily.delete()
    adapt = connection.ops.adapt_datetimefield_value
    _insert_many(UsageHour, ["hour", "day", "hour_of_day", "user_id", "api_key_id", "model_name", *COUNTS],
                 [(adapt(key[0]), *key[1:], *row) for key, row in hours.items()])
    _insert_many(UsageDay, ["day", "user_id", "api_key_id", "model_name", *COUNTS, *TTFT_COLUMNS, *TPS_COLUMNS],
                 [(*key, *row) for key, row in days.items()])
    return len(hours)


# ---------------------------------------------------------------------------------------------------------
# Reads: the usage page and its CSV


@dataclass
class Filters:
    start: date
    end: date  # inclusive
    user_ids: list[int] | None = None  # None: everyone (admins); a member sees only themselves
    group_id: int | None = None
    model_name: str = ""
    api_key_id: int | None = None


def rollups(filters: Filters, model=None):
    """The rows of `model` (UsageDay by default) that the filters select."""
    rows = (model or UsageDay).objects.filter(day__gte=filters.start, day__lte=filters.end)
    if filters.user_ids is not None:
        rows = rows.filter(user_id__in=filters.user_ids)
    if filters.group_id is not None:
        rows = rows.filter(user__groups=filters.group_id)
    if filters.model_name:
        rows = rows.filter(model_name=filters.model_name)
    if filters.api_key_id is not None:
        rows = rows.filter(api_key_id=filters.api_key_id)
    return rows.order_by()


def daily_rows(filters: Filters) -> list[dict]:
    """Per day, user, key and model: requests, failures, prompt and completion tokens (the CSV's rows)."""
    return list(rollups(filters).values("day", "user_id", "api_key_id", "model_name", "requests", "failures",
                                        "prompt_tokens", "completion_tokens")
                .order_by("day", "user_id", "api_key_id", "model_name"))


def median_from(counts: list[int], edges) -> float | None:
    """The median of a fixed-bucket histogram: interpolated within its bucket on a log scale (the first bucket
    from half its edge, the last up to twice its edge)."""
    total = sum(counts)
    if not total:
        return None
    half, seen = total / 2, 0
    for index, count in enumerate(counts):
        if count and seen + count >= half:
            low = edges[index - 1] if index else edges[0] / 2
            high = edges[index] if index < len(edges) else edges[-1] * 2
            fraction = (half - seen) / count
            return low * (high / low) ** fraction
        seen += count
    return None


@dataclass
class Report:
    days: list[date]
    tokens_by: dict[str, dict[str, list[int]]]  # "user"|"group"|"model"|"key" -> label -> tokens per day
    requests: list[int]
    failures: list[int]
    totals: dict[str, int]
    speed: list[dict]  # per model: requests, median ttft (s), median tokens/s
    hours: list[int]  # requests per hour of the day (TIME_ZONE)


def report(filters: Filters, names) -> Report:
    """Everything the usage page draws: one grouped query over the daily rollups per breakdown (user, group, model,
    key), one for the speed histograms, one over the hourly rollups for the busiest hours, whatever the period.
    `names(user_ids, key_ids)` -> ({user id: name}, {key id: name})."""
    span = (filters.end - filters.start).days + 1
    days = [filters.start + timedelta(days=i) for i in range(span)]
    index = {day: i for i, day in enumerate(days)}
    tokens = Sum("prompt_tokens") + Sum("completion_tokens")
    tokens_by: dict[str, dict] = {"user": {}, "group": {}, "model": {}, "key": {}}

    def add(kind: str, label, day: date, value: int) -> None:
        tokens_by[kind].setdefault(label, [0] * span)[index[day]] += value

    requests, failures = [0] * span, [0] * span
    totals = {"requests": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for row in rollups(filters).values("day", "model_name").annotate(
            n=Sum("requests"), failed=Sum("failures"), prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens")):
        add("model", row["model_name"], row["day"], row["prompt"] + row["completion"])
        requests[index[row["day"]]] += row["n"]
        failures[index[row["day"]]] += row["failed"]
        for name, key in (("requests", "n"), ("failures", "failed"), ("prompt_tokens", "prompt"),
                          ("completion_tokens", "completion")):
            totals[name] += row[key]
    for row in rollups(filters).values("day", "user_id").annotate(t=tokens):
        add("user", row["user_id"], row["day"], row["t"])
    for row in rollups(filters).values("day", "api_key_id").annotate(t=tokens):
        add("key", row["api_key_id"], row["day"], row["t"])
    for row in rollups(filters).filter(user__groups__isnull=False).values("day", "user__groups__name").annotate(
            t=tokens):
        add("group", row["user__groups__name"], row["day"], row["t"])
    users, keys = names(set(tokens_by["user"]), {key for key in tokens_by["key"] if key})
    tokens_by["user"] = {users.get(pk, f"user {pk}"): values for pk, values in tokens_by["user"].items()}
    tokens_by["key"] = {(keys.get(pk, f"key {pk}") if pk else "chat pages"): values
                        for pk, values in tokens_by["key"].items()}
    speed = []
    for model in rollups(filters).values("model_name").annotate(
            n=Sum("requests"), **{f"s_{c}": Sum(c) for c in TTFT_COLUMNS + TPS_COLUMNS}).order_by("model_name"):
        speed.append({"model": model["model_name"], "requests": model["n"], "requests_text": f"{model['n']:,}",
                      "ttft": median_from([model[f"s_{c}"] for c in TTFT_COLUMNS], TTFT_EDGES),
                      "tps": median_from([model[f"s_{c}"] for c in TPS_COLUMNS], TPS_EDGES)})
    hours = [0] * 24
    for hour in rollups(filters, UsageHour).values("hour_of_day").annotate(n=Sum("requests")):
        hours[hour["hour_of_day"]] = hour["n"]
    return Report(days, tokens_by, requests, failures, totals, speed, hours)
