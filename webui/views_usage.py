"""The usage page (charts of the hourly rollups, CSV export) and the admins' quotas page."""

from __future__ import annotations

import csv
from datetime import date, timedelta

from django.contrib import messages as flash
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from api.models import ApiKey
from inference import quotas
from inference.audit import audit_record
from inference.models import QuotaPeriod, TokenQuota, UsageDay
from inference.usage import Filters, daily_rows, report

DEFAULT_DAYS = 30
MAX_DAYS = 732
PRESETS = (7, 30, 90, 365)


def _date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _filters(request) -> Filters:
    """The period (start and end, inclusive; the last 30 days by default, at most two years) and the filters:
    admins pick anyone, a member sees only their own usage."""
    today = timezone.localdate()
    end = _date(request.GET.get("end")) or today
    start = _date(request.GET.get("start")) or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        start, end = end, start
    start = max(start, end - timedelta(days=MAX_DAYS - 1))
    staff = request.user.is_staff
    chosen_user = _int(request.GET.get("user")) if staff else None
    return Filters(
        start=start, end=end,
        user_ids=[chosen_user] if chosen_user else (None if staff else [request.user.pk]),
        group_id=_int(request.GET.get("group")) if staff else None,
        model_name=request.GET.get("model", "")[:128],
        api_key_id=_int(request.GET.get("key")),
    )


def _names(user_ids, key_ids) -> tuple[dict, dict]:
    """Names of users and API keys (two queries, whatever the period)."""
    users = dict(get_user_model().objects.filter(pk__in=user_ids).values_list("pk", "username"))
    keys = {pk: f"{name or prefix} ({prefix})" for pk, name, prefix in
            ApiKey.objects.filter(pk__in=key_ids).values_list("pk", "name", "prefix")}
    return users, keys


def _labels(rows) -> dict:
    """Names for the CSV's users and keys, and each user's groups."""
    user_ids = {row["user_id"] for row in rows}
    users, keys = _names(user_ids, {row["api_key_id"] for row in rows if row["api_key_id"]})
    groups: dict[int, list[str]] = {}
    for user_id, name in Group.objects.filter(user__in=user_ids).values_list("user", "name"):
        groups.setdefault(user_id, []).append(name)
    return {"user": users, "key": keys, "groups": groups}


def _series(by_label: dict[str, list[int]], limit: int = 8) -> list[dict]:
    """The largest `limit` series by total, the rest summed as "others"."""
    ordered = sorted(by_label.items(), key=lambda item: -sum(item[1]))
    series = [{"label": label, "values": values} for label, values in ordered[:limit]]
    if len(ordered) > limit:
        rest = [sum(values) for values in zip(*(values for _, values in ordered[limit:]), strict=True)]
        series.append({"label": f"{len(ordered) - limit} others", "values": rest})
    return series


@login_required
def usage(request):
    filters = _filters(request)
    result = report(filters, _names)
    staff = request.user.is_staff
    choices = {
        "models": UsageDay.objects.filter(**({} if staff else {"user": request.user})).order_by(
            "model_name").values_list("model_name", flat=True).distinct(),
        "keys": ApiKey.objects.filter(**({} if staff else {"owner": request.user})).select_related("owner"),
    }
    if staff:
        choices["users"] = get_user_model().objects.order_by("username").only("pk", "username")
        choices["groups"] = Group.objects.order_by("name")
    charts = {
        "days": [day.isoformat() for day in result.days],
        "tokens": {kind: _series(result.tokens_by[kind]) for kind in ("user", "group", "model", "key")},
        "requests": result.requests, "failures": result.failures, "hours": result.hours,
    }
    today = timezone.localdate()
    return render(request, "webui/usage.html", {
        "filters": filters, "report": result, "charts": charts, "choices": choices, "staff": staff,
        "presets": [(days, (today - timedelta(days=days - 1)).isoformat(), today.isoformat()) for days in PRESETS],
        "quota_states": [(_quota_line(state), not state.remaining) for state in quotas.states(request.user)],
        "totals": {name: f"{value:,}" for name, value in result.totals.items()},
        "time_zone": timezone.get_current_timezone_name(),
        "query": request.GET.urlencode(),
    })


def _quota_line(state: quotas.QuotaState) -> str:
    if not state.remaining:
        return state.message()
    reserved = f" (and {state.reserved:,} reserved by requests still running)" if state.reserved else ""
    return (f"{state.quota.get_period_display().capitalize()} quota of {state.quota.subject_label}: "
            f"{state.used:,} of {quotas.tokens_text(state.limit)} used{reserved}, {state.remaining:,} left; it resets "
            f"{timezone.localtime(state.resets_at):%-d %b at %H:%M}.")


@login_required
def usage_csv(request):
    """The usage page's rows: one per day, user, API key and model."""
    filters = _filters(request)
    rows = daily_rows(filters)
    names = _labels(rows)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (f'attachment; filename="hearth-usage-{filters.start.isoformat()}-'
                                       f'{filters.end.isoformat()}.csv"')
    writer = csv.writer(response)
    writer.writerow(["day", "user", "groups", "api_key", "model", "requests", "failures", "prompt_tokens",
                     "completion_tokens", "total_tokens"])
    for row in rows:
        writer.writerow([
            row["day"].isoformat(), _csv_text(str(names["user"].get(row["user_id"], row["user_id"]))),
            _csv_text(" ".join(names["groups"].get(row["user_id"], ()))),
            _csv_text(names["key"].get(row["api_key_id"], "") if row["api_key_id"] else ""),
            _csv_text(row["model_name"]), row["requests"], row["failures"], row["prompt_tokens"],
            row["completion_tokens"], row["prompt_tokens"] + row["completion_tokens"],
        ])
    return response


def _csv_text(value: str) -> str:
    """No spreadsheet formulas from names (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


# ---------------------------------------------------------------------------------------------------------
# Quotas: admins only


def _subject(value: str) -> dict:
    """"user:3" | "group:2" | "key:5" -> the quota's subject field, the object checked to exist."""
    scope, _, pk = value.partition(":")
    models = {"user": ("user", get_user_model()), "group": ("group", Group), "key": ("api_key", ApiKey)}
    if scope not in models or not pk.isdigit():
        raise ValidationError("Pick a user, a group or an API key.")
    field, model = models[scope]
    subject = model.objects.filter(pk=int(pk)).first()
    if subject is None:
        raise ValidationError("That user, group or key no longer exists.")
    return {field: subject}


@login_required
def quotas_page(request):
    if not request.user.is_staff:
        raise PermissionDenied("Only admins may set quotas.")
    if request.method == "POST":
        try:
            if request.POST.get("action") == "delete":
                flash.success(request, f"Removed the {_quota_delete(request.user, _int(request.POST.get('quota')))}.")
            else:
                flash.success(request, f"Set the {_quota_set(request.user, request.POST)}.")
        except ValidationError as error:
            flash.error(request, " ".join(error.messages))
        return redirect("webui:quotas")
    rows = []
    now = timezone.now()
    listed = list(TokenQuota.objects.select_related("user", "group", "api_key__owner").order_by(
        "user__username", "group__name", "api_key__prefix", "period"))
    counters = quotas.current_counters(listed, now) if listed else {}
    for quota in listed:
        counter, resets_at = counters[quota.pk]
        rows.append(quotas.QuotaState(quota, counter.used, counter.reserved, resets_at))
    return render(request, "webui/quotas.html", {
        "rows": rows, "periods": QuotaPeriod.choices, "time_zone": timezone.get_current_timezone_name(),
        "users": get_user_model().objects.order_by("username").only("pk", "username"),
        "groups": Group.objects.order_by("name"),
        "keys": ApiKey.objects.filter(revoked_at__isnull=True).select_related("owner").order_by("owner__username"),
    })


def _quota_set(actor, data) -> str:
    subject = _subject(data.get("subject", ""))
    period = data.get("period", "")
    if period not in QuotaPeriod.values:
        raise ValidationError("Pick a period: daily or monthly.")
    tokens = _int((data.get("tokens") or "").replace(",", "").replace("_", "").strip())
    if tokens is None or tokens < 1 or tokens > 10**15:
        raise ValidationError("A quota is a whole number of tokens, at least 1.")
    with transaction.atomic():
        quota = TokenQuota.objects.select_for_update().filter(period=period, **subject).first()
        previous = quota.tokens if quota else None
        if quota is None:
            quota = TokenQuota.objects.create(period=period, tokens=tokens, **subject)
        else:
            quota.tokens = tokens
            quota.save(update_fields=["tokens", "updated_at"])
        audit_record(actor, "quota.set", quota.subject_label, period=period, tokens=tokens, previous=previous)
    return _quota_text(quota)


def _quota_text(quota: TokenQuota) -> str:
    return f"{quota.get_period_display()} quota of {quotas.tokens_text(quota.tokens)} for {quota.subject_label}"


def _quota_delete(actor, quota_id: int | None) -> str:
    quota = TokenQuota.objects.select_related("user", "group", "api_key__owner").filter(pk=quota_id).first()
    if quota is None:
        raise ValidationError("That quota no longer exists.")
    with transaction.atomic():
        audit_record(actor, "quota.delete", quota.subject_label, period=quota.period, tokens=quota.tokens)
        quota.delete()
    return _quota_text(quota)
