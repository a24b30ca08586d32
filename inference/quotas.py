"""Token quotas and the concurrent-jobs limit: admission when a job is queued, settlement when it ends.

Tokens are only known when a job ends, so admission reserves an estimate (`estimate()`: the prompt's characters
÷ 4, plus `max_tokens` per choice, within the model's context) on every counter that applies — the user's, each of
their groups' (the group's shared pool) and the API key's, for the current calendar day and month in TIME_ZONE —
with one conditional UPDATE per counter (`reserved = reserved + estimate WHERE used + reserved < limit`), in id
order, in the transaction that creates the job. A request is admitted while every applicable quota has a token
left; two requests cannot both take the last tokens (the second sees the first's reservation). The job's end
(`settle`, called in the transaction that writes the job's final row: runner, reaper, cancel) deletes the
reservation and moves its counters from the estimate to the real prompt + completion tokens: once, whoever ends
the job (a reservation row can be deleted only once). `sweep()` settles reservations whose job ended without it or
vanished, so none leaks.

A counter is created the first time a window is used, seeded from the usage rollups (inference/usage.py) of the
window so far, so a quota set mid-month counts the month's earlier jobs.

The concurrent-jobs limit (ApiKey.max_concurrent_jobs) is checked with the key's row locked, in the same
transaction that creates the job (SQLite: Hearth opens every transaction IMMEDIATE, so writers are serialized).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db import transaction
from django.db.models import F, IntegerField, Q, Sum, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from inference.engine.base import EngineError
from inference.models import (
    GenerationJob,
    JobStatus,
    QuotaCounter,
    QuotaPeriod,
    QuotaReservation,
    TokenQuota,
    UsageDay,
)

CONCURRENCY_RETRY_AFTER_SECONDS = 1
SWEEP_AFTER_SECONDS = 60
DEFAULT_REPLY_ESTIMATE = 1024  # a reply without max_tokens on a model of unknown context


class QuotaExceeded(EngineError):
    code = "quota_exceeded"
    status = 429

    def __init__(self, message: str, state: QuotaState, retry_after: int):
        super().__init__(message)
        self.state = state
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return self.state.headers


class ConcurrencyLimited(EngineError):
    code = "rate_limit_exceeded"
    status = 429
    retry_after = CONCURRENCY_RETRY_AFTER_SECONDS


@dataclass(frozen=True)
class QuotaState:
    """One quota in its current window: what the x-ratelimit-*-tokens headers and the 429's message tell."""

    quota: TokenQuota
    used: int
    reserved: int
    resets_at: datetime

    @property
    def limit(self) -> int:
        return self.quota.tokens

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)

    def seconds_left(self, now: datetime | None = None) -> int:
        return max(1, math.ceil((self.resets_at - (now or timezone.now())).total_seconds()))

    @property
    def numbers(self) -> dict[str, str]:
        """limit, used, reserved and remaining as a person reads them ("50,000")."""
        return {name: f"{getattr(self, name):,}" for name in ("limit", "used", "reserved", "remaining")}

    @property
    def headers(self) -> dict[str, str]:
        return {"x-ratelimit-limit-tokens": str(self.limit), "x-ratelimit-remaining-tokens": str(self.remaining),
                "x-ratelimit-reset-tokens": duration_text(self.seconds_left())}

    def message(self, now: datetime | None = None) -> str:
        now = now or timezone.now()
        used = f"{self.used:,} used" + (f", {self.reserved:,} reserved by requests still running"
                                         if self.reserved else "")
        return (f"{_whose(self.quota)} {self.quota.get_period_display()} quota of {tokens_text(self.limit)} is used up "
                f"({used}); it resets {_when(self.resets_at, now)} (in {_span(self.seconds_left(now))}).")


def tokens_text(count: int) -> str:
    return f"{count:,} token{'' if count == 1 else 's'}"


def duration_text(seconds: int) -> str:
    """OpenAI's x-ratelimit-reset-* format: "6m0s", "3h12m5s"."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


def _whose(quota: TokenQuota) -> str:
    if quota.user_id:
        return "Your"
    if quota.group_id:
        return f"Your group {quota.group.name}'s"
    return "This API key's"


def _when(moment: datetime, now: datetime) -> str:
    local, today = timezone.localtime(moment), timezone.localtime(now).date()
    if local.date() == today + timedelta(days=1) or local.date() == today:
        return f"at {local:%H:%M}"
    return f"on {local.day} {local:%B} at {local:%H:%M}"


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = math.ceil(rest / 60) if not days else 0
    if minutes == 60:
        hours, minutes = hours + 1, 0
    parts = ([f"{days} day{'s' if days != 1 else ''}"] if days else []) + ([f"{hours} h"] if hours else []) + (
        [f"{minutes} min"] if minutes else [])
    return " ".join(parts) or "1 min"


# ---------------------------------------------------------------------------------------------------------
# Windows


def window(period: str, now: datetime | None = None) -> tuple[date, datetime, datetime]:
    """(first day, start, end) of the calendar day or month holding `now`, in the server's TIME_ZONE."""
    local = timezone.localtime(now or timezone.now())
    if period == QuotaPeriod.DAY:
        first, following = local.date(), local.date() + timedelta(days=1)
    else:
        first = local.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    zone = timezone.get_current_timezone()
    return first, timezone.make_aware(datetime.combine(first, time()), zone), timezone.make_aware(
        datetime.combine(following, time()), zone)


# ---------------------------------------------------------------------------------------------------------
# Admission


def applicable(owner, api_key=None) -> list[TokenQuota]:
    """The quotas of `owner`, of each of their groups and of `api_key`, in id order."""
    subjects = Q(user=owner) | Q(group__in=owner.groups.values("pk"))
    if api_key is not None:
        subjects |= Q(api_key=api_key)
    return list(TokenQuota.objects.filter(subjects).select_related("group", "api_key").order_by("id"))


def estimate(model, request) -> int:
    """Tokens a request may use, reserved until it ends: its prompt's characters ÷ 4 (within the context) plus,
    per choice, its max_tokens (none: what the context leaves) within what the context leaves."""
    from inference.specs import effective_context

    chars = len(request.prompt or "")
    for message in request.messages or ():
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    context = effective_context(model) if model is not None else 0
    prompt = math.ceil(chars / 4)
    if context:
        prompt = min(prompt, context)
    reply = request.max_tokens if request.max_tokens is not None else (
        context - prompt if context else DEFAULT_REPLY_ESTIMATE)
    if context:
        reply = min(reply, context - prompt)
    return max(1, prompt + max(0, reply) * max(1, request.n))


def current_counters(quotas: list[TokenQuota], now: datetime) -> dict[int, tuple[QuotaCounter, datetime]]:
    """quota id -> (its counter of the current window, when that window ends); missing counters are created,
    seeded from the window's rollups."""
    spans = {quota.pk: window(quota.period, now) for quota in quotas}
    wanted = Q(pk__in=[])
    for quota in quotas:
        wanted |= Q(quota_id=quota.pk, window_start=spans[quota.pk][0])
    found = {counter.quota_id: counter for counter in QuotaCounter.objects.filter(wanted)}
    missing = [quota for quota in quotas if quota.pk not in found]
    if missing:
        QuotaCounter.objects.bulk_create(
            [QuotaCounter(quota=quota, window_start=spans[quota.pk][0],
                          used=_used_so_far(quota, spans[quota.pk][1], spans[quota.pk][2])) for quota in missing],
            ignore_conflicts=True)
        found = {counter.quota_id: counter for counter in QuotaCounter.objects.filter(wanted)}
    return {quota.pk: (found[quota.pk], spans[quota.pk][2]) for quota in quotas}


def _used_so_far(quota: TokenQuota, start: datetime, end: datetime) -> int:
    rows = UsageDay.objects.filter(day__gte=timezone.localdate(start), day__lt=timezone.localdate(end))
    if quota.user_id:
        rows = rows.filter(user_id=quota.user_id)
    elif quota.group_id:
        rows = rows.filter(user__groups=quota.group_id)
    else:
        rows = rows.filter(api_key_id=quota.api_key_id)
    return rows.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), Value(0)))["total"]


def states(owner, api_key=None, now: datetime | None = None) -> list[QuotaState]:
    """Every quota that applies to `owner` (and `api_key`) in its current window (for pages; creates counters)."""
    now = now or timezone.now()
    quotas = applicable(owner, api_key)
    if not quotas:
        return []
    counters = current_counters(quotas, now)
    return [QuotaState(quota, counters[quota.pk][0].used, counters[quota.pk][0].reserved, counters[quota.pk][1])
            for quota in quotas]


def tightest(found: list[QuotaState]) -> QuotaState | None:
    """The quota that binds: the fewest tokens left (then the smallest limit)."""
    return min(found, key=lambda state: (state.remaining, state.limit), default=None)


@dataclass
class Admission:
    tokens: int
    counter_ids: list[int]
    state: QuotaState | None  # the binding quota after this reservation (its headers go on the answer)


def admit(owner, api_key, model, request, now: datetime | None = None) -> Admission | None:
    """Reserve the request's estimate on every applicable quota, or raise QuotaExceeded naming the quota that is
    used up. Call inside the transaction that creates the job (a refusal rolls back what was reserved)."""
    quotas = applicable(owner, api_key)
    if not quotas:
        return None
    now = now or timezone.now()
    counters = current_counters(quotas, now)
    tokens = estimate(model, request)
    by_counter = sorted(quotas, key=lambda quota: counters[quota.pk][0].pk)  # one lock order for everyone
    for quota in by_counter:
        counter = counters[quota.pk][0]
        taken = QuotaCounter.objects.filter(pk=counter.pk, used__lt=quota.tokens - F("reserved")).update(
            reserved=F("reserved") + tokens)
        if not taken:
            _refuse(quotas, counters, now)
    found = _states_now(quotas, counters)
    return Admission(tokens, [counter.pk for counter, _ in counters.values()], tightest(found))


def _states_now(quotas, counters) -> list[QuotaState]:
    """Each quota's state as its counter row holds it now (read again: other requests move it)."""
    fresh = {counter.pk: counter for counter in QuotaCounter.objects.filter(
        pk__in=[counter.pk for counter, _ in counters.values()])}
    return [QuotaState(quota, fresh[counters[quota.pk][0].pk].used, fresh[counters[quota.pk][0].pk].reserved,
                       counters[quota.pk][1]) for quota in quotas]


def _refuse(quotas, counters, now: datetime):
    found = _states_now(quotas, counters)
    spent = [state for state in found if state.remaining == 0]
    # Usable again once every used-up quota has reset: the one that resets last is the one to name.
    named = max(spent, key=lambda state: (state.resets_at, -state.limit)) if spent else tightest(found)
    raise QuotaExceeded(named.message(now), named, named.seconds_left(now))


def reserve(job_id, admission: Admission | None) -> None:
    if admission is not None:
        QuotaReservation.objects.create(job_id=job_id, tokens=admission.tokens, counters=admission.counter_ids)


def check_concurrency_locked(api_key, sequences: int) -> None:
    """Raise ConcurrencyLimited when the key already has its limit of generations queued or running. Locks the
    key's row, so the check and the job's creation in the same transaction are one step for every process."""
    if api_key is None:
        return
    from api.models import ApiKey

    limit = ApiKey.objects.select_for_update().filter(pk=api_key.pk).values_list(
        "max_concurrent_jobs", flat=True).first()
    if limit is None:
        return
    active = active_sequences(api_key)
    if active + sequences > limit:
        raise ConcurrencyLimited(
            f"This API key already has {active} generations running or queued (its limit is {limit}); wait for "
            "one to finish.")


def active_sequences(api_key) -> int:
    """The generations of the key's queued and running jobs: a job of n choices counts n (its request's "n")."""
    choices = Coalesce(Cast(KT("request__n"), IntegerField()), Value(1))
    jobs = GenerationJob.objects.filter(api_key=api_key, status__in=(JobStatus.QUEUED, JobStatus.RUNNING))
    return jobs.aggregate(total=Coalesce(Sum(choices), Value(0)))["total"]


# ---------------------------------------------------------------------------------------------------------
# Settlement


def settle(job_id, tokens: int) -> bool:
    """Replace the job's reservation by the tokens it used (prompt + completion); False when it holds none (no
    quota applied, or already settled). Runs in the caller's transaction, or in one of its own."""
    with transaction.atomic():
        reservation = QuotaReservation.objects.select_for_update().filter(job_id=job_id).first()
        if reservation is None:
            return False
        if not QuotaReservation.objects.filter(pk=reservation.pk).delete()[0]:
            return False
        for counter_id in sorted(reservation.counters):  # one at a time, in admission's lock order
            QuotaCounter.objects.filter(pk=counter_id).update(
                used=F("used") + max(0, int(tokens)), reserved=F("reserved") - reservation.tokens)
        return True


def sweep(older_than: float = SWEEP_AFTER_SECONDS) -> int:
    """Settle the reservations of jobs that ended without settling them or no longer exist (their tokens as the
    row has them; 0 for a vanished job). Run by the reaper, in every process; settling twice is not possible."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    live = GenerationJob.objects.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING)).values("id")
    stale = list(QuotaReservation.objects.filter(created_at__lt=cutoff).exclude(job_id__in=live)
                 .values_list("job_id", flat=True)[:500])
    if not stale:
        return 0
    used = {job_id: prompt + completion for job_id, prompt, completion in GenerationJob.objects.filter(
        id__in=stale).values_list("id", "prompt_tokens", "completion_tokens")}
    return sum(settle(job_id, used.get(job_id, 0)) for job_id in stale)
