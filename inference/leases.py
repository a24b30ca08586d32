"""Who runs which job: claims under a lease, renewal by the heartbeat, and what happens when an owner is gone.

- `claim_next(worker)`: a worker takes the queued job whose turn it is — the owner with the fewest running jobs
  first (users are served in turn: one user's burst does not push a teammate's chat to the back), then the
  oldest — and holds it under a lease of HEARTH_LEASE_SECONDS.
- `renew(worker, job_ids)`: each heartbeat extends the leases of the jobs the worker still runs.
- `hand_back(job_id, worker)`: a worker that stops (SIGTERM) returns a job to the queue for another to continue.
- `reap()`: run every few seconds by each worker's heartbeat and by the web process. A running job whose lease
  lapsed while its worker is absent from the heartbeats is queued again (another worker continues its stream
  from the relay) or, with no live worker at all, failed with an error event that says so; queued jobs are
  failed the same way when no worker has been alive for HEARTH_LEASE_SECONDS. Nothing stays `running` or
  `queued` without a live owner, and such ghosts never count against a key's limits.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from inference.models import GenerationJob, JobStatus

log = logging.getLogger(__name__)

NO_WORKER_RETRY_AFTER_SECONDS = 10
MAX_TAKEOVERS = 3  # a job whose workers keep dying (a poisonous request?) fails after this many
STALE_QUEUED_SECONDS = 30  # a job queued this long gets its message sent again (one may have been lost)


def lease_deadline():
    return timezone.now() + timedelta(seconds=settings.HEARTH_LEASE_SECONDS)


def _owner_running():
    running = (GenerationJob.objects.filter(owner=OuterRef("owner"), status=JobStatus.RUNNING)
               .order_by().values("owner").annotate(n=Count("id")).values("n"))
    return Coalesce(Subquery(running, output_field=IntegerField()), Value(0))


def claim_next(worker: str) -> GenerationJob | None:
    """Take the queued job whose turn it is (None when none waits); it is `running`, leased to `worker`."""
    for _attempt in range(5):
        with transaction.atomic():
            candidate = (GenerationJob.objects.filter(status=JobStatus.QUEUED)
                         .annotate(owner_running=_owner_running())
                         .order_by("owner_running", "created_at")
                         .select_for_update(skip_locked=True, of=("self",))
                         .values_list("id", flat=True).first())
            if candidate is None:
                return None
            now = timezone.now()
            taken = GenerationJob.objects.filter(id=candidate, status=JobStatus.QUEUED).update(
                status=JobStatus.RUNNING, worker=worker, lease_expires_at=lease_deadline(),
                started_at=Coalesce("started_at", Value(now)))
        if taken:
            return GenerationJob.objects.select_related("model").get(id=candidate)
    return None


def queue_positions() -> dict[str, int]:
    """Queued job id -> its place in the line (1: next), in the order claim_next takes them."""
    queued = (GenerationJob.objects.filter(status=JobStatus.QUEUED).annotate(owner_running=_owner_running())
              .order_by("owner_running", "created_at").values_list("id", "owner_id"))
    # Claims change the running counts as they go: simulate them, one job per owner per round.
    rounds: dict[int, list] = {}
    for job_id, owner_id in queued:
        rounds.setdefault(owner_id, []).append(job_id)
    order, round_index = [], 0
    while rounds:
        for owner_id in list(rounds):
            jobs = rounds[owner_id]
            if round_index < len(jobs):
                order.append(jobs[round_index])
            else:
                del rounds[owner_id]
        round_index += 1
    return {str(job_id): position for position, job_id in enumerate(order, start=1)}


def renew(worker: str, job_ids: list[str]) -> set[str]:
    """Extend the leases of `worker`'s jobs; returns those that are no longer its own (taken over, ended)."""
    if not job_ids:
        return set()
    mine = GenerationJob.objects.filter(id__in=job_ids, worker=worker, status=JobStatus.RUNNING)
    mine.update(lease_expires_at=lease_deadline())
    kept = {str(job_id) for job_id in mine.values_list("id", flat=True)}
    return set(job_ids) - kept


def hand_back(job_id: str, worker: str) -> bool:
    """Return a running job to the queue (its worker is shutting down) and send it to the workers again."""
    returned = GenerationJob.objects.filter(id=job_id, worker=worker, status=JobStatus.RUNNING).update(
        status=JobStatus.QUEUED, worker="", lease_expires_at=None)
    if returned:
        _send_task(str(job_id))
    return bool(returned)


def wake_queued() -> int:
    """Send a task for every queued job (a worker starting): jobs whose message a broker lost (kombu's in-memory
    transport of the embedded mode ends with its process; a Redis restart without persistence) are run too. A
    job that already has a message is not run twice: a task takes whichever job is queued, or none."""
    ids = [str(job_id) for job_id in GenerationJob.objects.filter(status=JobStatus.QUEUED).values_list("id", flat=True)]
    for job_id in ids:
        _send_task(job_id)
    return len(ids)


def _send_task(job_id: str) -> None:
    from inference.tasks import GENERATION_QUEUE, generation_run

    generation_run.apply_async(args=[job_id], queue=GENERATION_QUEUE)


class Reaper:
    """Finds jobs without a live owner and requeues or fails them. One per process; `run()` is idempotent and
    safe in every process at once (each change is a conditional UPDATE)."""

    def __init__(self) -> None:
        self._no_worker_since: float | None = None
        self._resent: dict[str, float] = {}
        self._lock = threading.Lock()

    def run(self) -> tuple[int, int]:
        """(jobs sent to another worker, jobs failed)."""
        from inference.presence import get_presence

        with self._lock:
            try:
                live = set(get_presence().live_workers())
            except Exception:  # Redis down: who is alive is unknown, so nothing is judged now
                return 0, 0
            now = time.monotonic()
            if live:
                self._no_worker_since = None
            elif self._no_worker_since is None:
                self._no_worker_since = now
            requeued = failed = 0
            lapsed = GenerationJob.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=timezone.now())
            for job in lapsed.only("id", "worker", "takeovers"):
                if job.worker in live:
                    continue  # alive (its database writes were slow): its next beat renews the lease
                if live and job.takeovers < MAX_TAKEOVERS:
                    requeued += self._requeue(job)
                else:
                    failed += self._fail(job, JobStatus.RUNNING, _worker_lost_text(job, live))
            no_worker_for = now - self._no_worker_since if self._no_worker_since is not None else 0
            if not live and no_worker_for >= settings.HEARTH_LEASE_SECONDS:
                for job in GenerationJob.objects.filter(status=JobStatus.QUEUED).only("id", "worker", "takeovers"):
                    failed += self._fail(job, JobStatus.QUEUED, NO_WORKER_TEXT)
            elif live:
                self._resend_stale(now)
            from inference.quotas import sweep

            sweep()  # quota reservations of jobs that ended without settling, or vanished
            return requeued, failed

    def _resend_stale(self, now: float) -> None:
        """A job queued for long may have lost its message (a broker restarted without it, a task that failed
        before it could claim): send one again now and then. A job never runs twice: a task takes whichever job
        is queued, or none."""
        stale = timezone.now() - timedelta(seconds=STALE_QUEUED_SECONDS)
        for job_id in GenerationJob.objects.filter(status=JobStatus.QUEUED, created_at__lt=stale).values_list(
                "id", flat=True)[:100]:
            key = str(job_id)
            if now - self._resent.get(key, 0.0) >= STALE_QUEUED_SECONDS:
                self._resent[key] = now
                _send_task(key)
        if len(self._resent) > 10_000:
            self._resent.clear()

    @staticmethod
    def _requeue(job: GenerationJob) -> int:
        moved = GenerationJob.objects.filter(id=job.id, status=JobStatus.RUNNING, worker=job.worker).update(
            status=JobStatus.QUEUED, worker="", lease_expires_at=None, takeovers=job.takeovers + 1)
        if moved:
            from inference.metrics import observe_takeover

            log.warning("job %s: its worker %s is gone; another worker takes it over", job.id, job.worker)
            observe_takeover()
            _send_task(str(job.id))
        return moved

    @staticmethod
    def _fail(job: GenerationJob, status: str, message: str) -> int:
        from inference.relay import get_relay
        from inference.usage import job_ended

        with transaction.atomic():
            ended = GenerationJob.objects.filter(id=job.id, status=status, worker=job.worker).update(
                status=JobStatus.FAILED, error_code="worker_lost", error_text=message, finished_at=timezone.now(),
                lease_expires_at=None)
            if ended:
                job_ended(job.id)
        if ended:
            log.warning("job %s failed: %s", job.id, message)
            get_relay().publish_terminal(str(job.id), {
                "kind": "error", "code": "worker_lost", "status": 503, "message": message,
                "retry_after": NO_WORKER_RETRY_AFTER_SECONDS})
        return ended


NO_WORKER_TEXT = ("No generation worker is running, so this request could not be served. Start a worker "
                  "(docker compose up -d worker; or celery -A config worker -Q generation) and try again.")


def _worker_lost_text(job: GenerationJob, live: set[str]) -> str:
    if job.takeovers >= MAX_TAKEOVERS and live:
        return (f"The workers running this request stopped {job.takeovers + 1} times (killed or crashed); it is "
                "not tried again. Check the worker logs; the request may be too large for the worker's memory.")
    return ("The worker running this request stopped (killed or crashed) and no other worker is running to "
            "continue it. Start a worker and try again.")


REAPER = Reaper()


def start_reaper_thread(period: float | None = None) -> threading.Thread:
    """The web process's reaper (production): it ends the streams of jobs whose workers are all gone, even when
    no worker is left to notice."""
    from django.db import close_old_connections

    period = period or settings.HEARTH_WORKER_HEARTBEAT_SECONDS

    def loop() -> None:
        while True:
            time.sleep(period)
            try:
                REAPER.run()
            except Exception:  # the database is down: try again next period
                log.warning("the reaper could not run", exc_info=True)
            finally:
                close_old_connections()

    thread = threading.Thread(target=loop, name="hearth-reaper", daemon=True)
    thread.start()
    return thread
