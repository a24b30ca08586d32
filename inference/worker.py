"""The engine of a worker process: the schedulers of its loaded models and the one thread that steps them.

Celery's thread pool delivers jobs (HEARTH_WORKER_SLOTS threads, so a worker takes as many jobs from the queue
as it has slots and leaves the rest to other workers). Each task thread prepares its job (inference/runner.py)
and hands it here as a `JobRun`; the engine thread adds it to its model's scheduler and steps every scheduler
that has work: one batch per step, each sampled token through the sequence's OutputProcessor, the events out to
the relay. Between steps, at most every FLAG_POLL_SECONDS, it reads the cancel flags and "watched" marks of all
its jobs in one round trip each: a cancelled job, or one nobody has followed for HEARTH_WATCH_SECONDS (its page and
socket gone), stops within a step and frees its slot for the next.

A run ends in one of three ways: finished (its "done" event is handed to its task thread, which writes the row
and then publishes it), failed (an error the task thread reports the same way), or abandoned (the job is no
longer this worker's: taken over after a lapsed lease, or handed back at shutdown), which publishes nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inference.engine.batch import BatchModel, KVCacheFull
from inference.engine.output import OutputProcessor
from inference.engine.scheduler import Scheduler, Sequence
from inference.relay import RELAY_OUTAGE_SECONDS, JobPublisher, Relay, publish_together

log = logging.getLogger(__name__)

FLAG_POLL_SECONDS = 0.2
IDLE_WAIT_SECONDS = 0.5


@dataclass(eq=False)
class JobRun:
    """One job in the engine: its sequence, its output processor and its stream."""

    job_id: str
    sequence: Sequence
    processor: OutputProcessor
    publisher: JobPublisher
    started: dict[str, Any] | None = None  # the "started" event to publish at admission (None: already out)
    terminal: dict[str, Any] | None = None  # "done" or "error", for the task thread to publish after the row
    abandoned: str = ""  # why this worker stopped writing the job (taken over, handed back)
    finished: threading.Event = field(default_factory=threading.Event)
    pending: list[dict[str, Any]] = field(default_factory=list)  # events the relay has not taken yet
    relay_failing_since: float | None = None
    stop_reason: str = ""  # why it was stopped from outside ("cancelled", "client gone")
    scheduler: Scheduler | None = None

    def flush(self) -> None:
        """Publish what is pending; raises StreamLost, or the relay's own error (kept for the next try)."""
        if self.pending:
            self.publisher.publish_many(self.pending)
            self.pending = []
        self.relay_failing_since = None


class Engine:
    def __init__(self, relay: Relay, *, chunk_tokens: int, cache_bytes: int, slots: int):
        self.relay = relay
        self.chunk_tokens = chunk_tokens
        self.cache_bytes = cache_bytes
        self.slots = slots
        self._lock = threading.Condition()
        self._schedulers: dict[int, Scheduler] = {}  # id(model) -> its scheduler
        self._labels: dict[int, str] = {}  # id(model) -> "name (backend)"
        self._runs: dict[str, JobRun] = {}
        self._incoming: list[tuple[JobRun, BatchModel]] = []
        self._outside_stops: dict[str, str] = {}  # job id -> why (abandon, cancel) applied by the engine thread
        self._stopping = False
        self._flags_at = 0.0
        self._thread: threading.Thread | None = None
        self.on_change: Callable[[], None] | None = None  # called (engine thread) when runs start or end

    # -- from task threads ---------------------------------------------------------------------------

    def submit(self, run: JobRun, model: BatchModel, label: str = "") -> None:
        """Hand a prepared job to the engine; `label` names the model in the stats ("name (backend)")."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the worker is shutting down")
            if label:
                self._labels[id(model)] = label
            self._incoming.append((run, model))
            self._ensure_thread()
            self._lock.notify_all()

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._runs) + [run.job_id for run, _ in self._incoming]

    def abandon(self, job_ids: set[str], reason: str) -> None:
        """Stop writing these jobs at the next step (no more events: they belong to someone else now)."""
        with self._lock:
            for job_id in job_ids:
                self._outside_stops[job_id] = f"abandon:{reason}"
            self._lock.notify_all()

    def busy(self, model: BatchModel) -> bool:
        with self._lock:
            scheduler = self._schedulers.get(id(model))
            return bool(scheduler and scheduler.has_work()) or any(m is model for _, m in self._incoming)

    def stats(self) -> list[dict[str, Any]]:
        """Per loaded model: its slots, the sequences running and waiting, what its caches hold."""
        with self._lock:
            return [{"model": self._labels.get(key, ""), **scheduler.stats()}
                    for key, scheduler in self._schedulers.items()]

    def forget(self, model: BatchModel) -> None:
        """The model cache closed this model: drop its scheduler."""
        with self._lock:
            self._schedulers.pop(id(model), None)
            self._labels.pop(id(model), None)

    def stop(self, timeout: float = 10) -> list[JobRun]:
        """Stop the engine thread; the runs still in it are returned, abandoned (the caller hands them back)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            runs = list(self._runs.values()) + [run for run, _ in self._incoming]
            self._runs.clear()
            self._incoming.clear()
            for scheduler in self._schedulers.values():
                scheduler.clear()
        for run in runs:
            run.abandoned = run.abandoned or "shutdown"
            run.finished.set()
        return runs

    # -- the engine thread ---------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="hearth-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._incoming and not self._outside_stops and not any(
                        s.has_work() for s in self._schedulers.values()):
                    self._lock.wait(IDLE_WAIT_SECONDS)
                if self._stopping:
                    return
                incoming, self._incoming = self._incoming, []
                stops, self._outside_stops = self._outside_stops, {}
                for run, model in incoming:
                    scheduler = self._schedulers.get(id(model))
                    if scheduler is None:
                        scheduler = self._schedulers[id(model)] = Scheduler(
                            model, chunk_tokens=self.chunk_tokens, cache_bytes=self.cache_bytes, slots=self.slots)
                    scheduler.add(run.sequence)
                    run.scheduler = scheduler
                    self._runs[run.job_id] = run
            try:
                self._apply_stops(stops)
                self._check_flags()
                for scheduler in list(self._schedulers.values()):
                    if scheduler.has_work():
                        self._step(scheduler)
            except Exception:  # never let the engine thread die with jobs in it
                log.exception("the engine step failed")
                time.sleep(0.1)

    def _step(self, scheduler: Scheduler) -> None:
        try:
            outputs = scheduler.step()
        except KVCacheFull:
            # One sequence alone is larger than the KV cache: it ends here (its context is full).
            for sequence in scheduler.sequences():
                self._end(self._runs[sequence.id], "length")
            return
        except Exception as error:
            log.exception("decoding failed; the jobs of this model fail")
            # Every run of this scheduler, also one it was admitting when it failed (in no queue of its own).
            for run in [r for r in self._runs.values() if r.scheduler is scheduler]:
                self._fail(run, error)
            return
        for sequence in scheduler.sequences():
            run = self._runs.get(sequence.id)
            if run is not None and run.started is not None and sequence.slot is not None:
                run.processor.cached_tokens = sequence.cached_tokens
                run.pending.append({**run.started, **({"cached_tokens": sequence.cached_tokens}
                                                       if sequence.cached_tokens else {})})
                run.started = None
        touched = {}
        for output in outputs:
            run = self._runs.get(output.sequence.id)
            if run is None:
                continue
            events = run.processor.add(output.token, output.logprobs)
            touched[run.job_id] = run
            if run.processor.finished:
                run.terminal = events.pop()
                run.pending.extend(events)
                self._finish(run)
            else:
                run.pending.extend(events)
        self._publish([run for run in self._runs.values() if run.pending])

    def _publish(self, runs: list[JobRun]) -> None:
        """The step's events of every run, in one round trip to the relay."""
        if not runs:
            return
        try:
            results = publish_together([(run.publisher, run.pending) for run in runs])
        except Exception as error:  # the relay is down: keep the events, try again next step
            now = time.monotonic()
            for run in runs:
                run.relay_failing_since = run.relay_failing_since or now
                if now - run.relay_failing_since > RELAY_OUTAGE_SECONDS:
                    self._fail(run, error)
            return
        for run, lost in zip(runs, results, strict=True):
            if lost is None:
                run.pending, run.relay_failing_since = [], None
            else:
                log.warning("job %s: %s; this worker stops writing it", run.job_id, lost)
                self._abandon(run, "taken over")

    def _apply_stops(self, stops: dict[str, str]) -> None:
        for job_id, why in stops.items():
            run = self._runs.get(job_id)
            if run is None:
                continue
            if why.startswith("abandon:"):
                self._abandon(run, why.removeprefix("abandon:"))
            else:
                run.stop_reason = why
                self._end(run, "cancelled")

    def _check_flags(self) -> None:
        now = time.monotonic()
        if now - self._flags_at < FLAG_POLL_SECONDS or not self._runs:
            return
        self._flags_at = now
        ids = list(self._runs)
        try:
            cancelled = self.relay.cancelled(ids)
            watched = self.relay.watched(ids)
        except Exception:  # the relay is down: nothing is known, nothing is stopped
            return
        for job_id in ids:
            run = self._runs.get(job_id)
            if run is None:
                continue
            if job_id in cancelled:
                run.stop_reason = "cancelled"
                self._end(run, "cancelled")
            elif job_id not in watched:
                run.stop_reason = "client gone"
                self._end(run, "cancelled")

    def _end(self, run: JobRun, reason: str) -> None:
        """Stop a run from outside: what was held back, then its "done"."""
        events = run.processor.end(reason)
        if events:
            run.terminal = events.pop()
            run.pending.extend(events)
        self._finish(run)

    def _fail(self, run: JobRun, error: BaseException) -> None:
        run.terminal = {"kind": "error", "exception": error}
        self._finish(run)

    def _abandon(self, run: JobRun, reason: str) -> None:
        run.abandoned = reason
        run.pending = []
        self._finish(run)

    def _finish(self, run: JobRun) -> None:
        """Take the run out of its scheduler (its slot keeps the tokens cached) and wake its task thread, which
        publishes what is still pending, writes the row, then publishes the terminal event."""
        if run.scheduler is not None:
            run.scheduler.finish(run.sequence.id)
        self._runs.pop(run.job_id, None)
        run.finished.set()
        if self.on_change is not None:
            self.on_change()
