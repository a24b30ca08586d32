"""Many threads ask for a generation at the same instant (a barrier), in a process of their own against the
database that DATABASE_URL names (PostgreSQL) or SQLite: `python -m tests.integration.quota_race MODE THREADS`.
MODE "quota": the user's daily quota has one token left; "concurrency": the API key may run one job at once;
"settle": THREADS admitted jobs end at once while another thread settles each again.
Prints JSON: how many were admitted, the refusals' codes, the counter, the jobs written (settle: the counter and
the rollups, live and rebuilt)."""

from __future__ import annotations

import json
import os
import sys
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import close_old_connections, connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from api.models import ApiKey  # noqa: E402
from inference import quotas  # noqa: E402
from inference.engine.base import EngineError, GenerationRequest  # noqa: E402
from inference.models import GenerationJob, LocalModel, QuotaCounter, QuotaPeriod, TokenQuota  # noqa: E402
from inference.presence import get_presence  # noqa: E402
from inference.services import generation_start  # noqa: E402


def main(mode: str, threads: int) -> dict:
    owner = get_user_model().objects.create_user(f"racer-{mode}", password="racer-password")
    key, _ = ApiKey.objects.issue(owner, "race")
    model = LocalModel.objects.create(name=f"race-{mode}", path="/nowhere.gguf", format="gguf", context_length=512)
    get_presence().beat("race-worker")
    quota = None
    if mode == "settle":
        return settle_race(owner, key, model, threads)
    if mode == "quota":
        quota = TokenQuota.objects.create(user=owner, period=QuotaPeriod.DAY, tokens=1000)
        quotas.current_counters([quota], timezone.now())
        QuotaCounter.objects.filter(quota=quota).update(used=999)  # one token left
    else:
        ApiKey.objects.filter(pk=key.pk).update(max_concurrent_jobs=1)
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def racer() -> None:
        try:
            barrier.wait()
            generation_start(owner=owner, model=model, api_key=key,
                             request=GenerationRequest(prompt="hello", max_tokens=8))
            outcome = "admitted"
        except EngineError as error:
            outcome = error.code
        except Exception as error:  # a database error would be a failure of the test
            outcome = f"error: {type(error).__name__}: {error}"
        finally:
            close_old_connections()
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=racer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counter = QuotaCounter.objects.filter(quota=quota).values("used", "reserved").first() if quota else None
    return {"vendor": connection.vendor, "admitted": outcomes.count("admitted"),
            "refused": sorted(outcome for outcome in outcomes if outcome != "admitted"),
            "counter": counter, "jobs": GenerationJob.objects.filter(owner=owner).count()}


def settle_race(owner, key, model, threads: int) -> dict:
    """`threads` jobs admitted under a quota end at the same instant, each also settled by a second thread (a
    worker and the sweep racing): every job counted once in the quota and in the rollups."""
    from inference.models import JobStatus, UsageDay, UsageHour
    from inference.runner import _finish_row
    from inference.usage import rebuild

    quota = TokenQuota.objects.create(user=owner, period=QuotaPeriod.MONTH, tokens=1_000_000)
    jobs = [generation_start(owner=owner, model=model, api_key=key,
                             request=GenerationRequest(prompt="hello", max_tokens=8)) for _ in range(threads)]
    GenerationJob.objects.filter(owner=owner).update(status=JobStatus.RUNNING, worker="w")
    barrier = threading.Barrier(threads * 2)

    def finish(job) -> None:
        barrier.wait()
        _finish_row(job, "w", status=JobStatus.SUCCEEDED, prompt_tokens=10, completion_tokens=5,
                    time_to_first_token=0.3, tokens_per_second=30.0)
        close_old_connections()

    def settle_again(job) -> None:
        barrier.wait()
        quotas.settle(job.id, 15)
        close_old_connections()

    racers = [threading.Thread(target=target, args=(job,)) for job in jobs for target in (finish, settle_again)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    fields = ["requests", "prompt_tokens", "completion_tokens", "ttft_3", "tps_5"]
    live = list(UsageDay.objects.values(*fields)), list(UsageHour.objects.values("requests", "prompt_tokens"))
    rebuild()
    rebuilt = list(UsageDay.objects.values(*fields)), list(UsageHour.objects.values("requests", "prompt_tokens"))
    return {"vendor": connection.vendor, "counter": QuotaCounter.objects.filter(quota=quota).values(
        "used", "reserved").first(), "live": live, "rebuilt": rebuilt}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
