"""Recompute the usage rollups (UsageHour) from the job table: after an upgrade, a TIME_ZONE change, or to
repair them. `--days N` redoes only the last N days."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from inference.usage import rebuild


class Command(BaseCommand):
    help = "Recompute the hourly usage rollups from the jobs."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="Only the last N days (default: everything).")

    def handle(self, *args, days=None, **options):
        if days is not None and days < 1:
            raise CommandError("--days is a number of days, at least 1.")
        since = timezone.now() - timedelta(days=days) if days else None
        with transaction.atomic():
            written = rebuild(since)
        self.stdout.write(f"Wrote {written} hourly usage rows" + (f" for the last {days} days." if days else "."))
