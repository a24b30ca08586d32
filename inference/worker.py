"""The engine of a worker process: the schedulers of its loaded models and the one thread that steps them.

Celery's thread pool delivers jobs (HEARTH_WORKER_SLOTS threads, so a worker takes as many jobs from the queue
as it has slots and leaves the rest to other workers). Each task thread prepares its job (inference/runner.py)
and hands it here as a `JobRun`; the engine thread adds it to its model's scheduler and steps every scheduler
that has work: one batch per step, each sampled token through the sequence's OutputProcessor, the events out to
the relay. Between steps, at most every FLAG_POLL_SECONDS, it reads the cancel flags and "watched" marks of all
its jobs in one round trip each: a cancelled job, or one nobody has followed for HEARTH_WATCH_SECONDS (its page and
socket gone), stops within a step and frees its slot for the next.

A job of n choices (`n` > 1) runs n sequences, one `Choice` each (its own sampler and OutputProcessor), that
the scheduler lets share the prompt's prefill. They publish one stream: every event carries its "choice", a
choice's end is a "choice_end" event (its processor's "done": finish_reason, its completion_tokens, ...), and the
job's "done" comes once every choice has ended, with "choices": n and the usage of all (the prompt counted once,
the completion tokens summed). A job of one choice publishes its processor's events unchanged (no "choice").

A run ends in one of three ways: finished (its "done" event is handed to its task thread, which writes the row
and then publishes it), failed (an error the task thread reports the same way), or abandoned (the job is no
longer this worker's: taken over after a lapsed lease, or handed back at shutdown), which publishes nothing more.
Stopping a job (cancelled, nobody following) ends every choice still running.
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
class Choice:
    """One of a job's choices: its index in the answer, the sequence the scheduler runs (None when it had ended
    before this worker took the job over) and the OutputProcessor that turns its tokens into events."""

    index: int
    processor: OutputProcessor
    sequence: Sequence | None = None
    started: dict[str, Any] | None = None  # its "started" event, to publish at admission (None: already out)
    end: dict[str, Any] | None = None  # its processor's "done", once it has ended
    read_reported: int = 0  # prompt tokens read when its last "progress" event went out


@dataclass(eq=False)
class JobRun:
    """One job in the engine: its choices (one for n == 1) and its one stream."""

    job_id: str
    choices: list[Choice]
    publisher: JobPublisher
    terminal: dict[str, Any] | None = None  # "done" or "error", for the task thread to publish after the row
    abandoned: str = ""  # why this worker stopped writing the job (taken over, handed back)
    finished: threading.Event = field(default_factory=threading.Event)
    pending: list[dict[str, Any]] = field(default_factory=list)  # events the relay has not taken yet
    relay_failing_since: float | None = None
    stop_reason: str = ""  # why it was stopped from outside ("cancelled", "client gone")
    scheduler: Scheduler | None = None

    @property
    def several(self) -> bool:
        return len(self.choices) > 1

    @property
    def running(self) -> list[Choice]:
        return [choice for choice in self.choices if choice.end is None]

    def start(self, choice: Choice, cached_tokens: int) -> None:
        """The choice got its slot: its "started" event, with the prompt tokens it found cached."""
        choice.processor.cached_tokens = cached_tokens
        started = {**choice.started, **({"cached_tokens": cached_tokens} if cached_tokens else {})}
        choice.started = None
        self.pending.extend(self._tagged(choice, [started]))

    def report_reading(self, choice: Choice, sequence: Sequence, chunk_tokens: int) -> None:
        """A prompt longer than a chunk: how much of it is read, once per chunk, until the first token (the chat
        shows it; the API dialects skip it)."""
        total, done = len(sequence.tokens), sequence.computed
        if not sequence.prefilling or total - sequence.cached_tokens <= chunk_tokens or done == choice.read_reported:
            return
        choice.read_reported = done
        self.pending.extend(self._tagged(choice, [{"kind": "progress", "prompt_tokens_read": done,
                                                   "prompt_tokens": total}]))

    def take(self, choice: Choice, events: list[dict[str, Any]]) -> None:
        """A choice's new events from its OutputProcessor. The one that ends it is kept as its end (published as
        "choice_end" when the job has several); the job's terminal "done" is set once no choice runs."""
        if choice.end is None and choice.processor.finished:
            choice.end = events.pop()
            if self.several:
                events.append({**choice.end, "kind": "choice_end"})
        self.pending.extend(self._tagged(choice, events))
        self.conclude()

    def end_exhausted(self) -> None:
        """End at once the choices whose earlier worker sent every token they may (a job taken over)."""
        for choice in self.running:
            if choice.processor.exhausted:
                self.take(choice, choice.processor.end("length"))
        self.conclude()

    def conclude(self) -> None:
        """Once every choice has ended: the job's "done" (the only choice's own, or the summary of several)."""
        if self.terminal is None and not self.running:
            self.terminal = self.choices[0].end if not self.several else summary_of([c.end for c in self.choices])

    def flush(self) -> None:
        """Publish what is pending; raises StreamLost, or the relay's own error (kept for the next try)."""
        if self.pending:
            self.publisher.publish_many(self.pending)
            self.pending = []
        self.relay_failing_since = None

    def _tagged(self, choice: Choice, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**event, "choice": choice.index} for event in events] if self.several else events


def summary_of(ends: list[dict[str, Any]]) -> dict[str, Any]:
    """The "done" of a job of several choices, from each choice's end: the prompt counted once (its cached part:
    what its one read found in a cache), the completion tokens summed, the first token of any choice, their rates
    added (they decode together). Cancelled when any choice was; else the first choice's finish reason."""
    reasons = [end["finish_reason"] for end in ends]
    done: dict[str, Any] = {
        "kind": "done",
        "choices": len(ends),
        "finish_reason": "cancelled" if "cancelled" in reasons else reasons[0],
        "prompt_tokens": ends[0]["prompt_tokens"],
        "completion_tokens": sum(end["completion_tokens"] for end in ends),
    }
    cached = min(end.get("cached_tokens", 0) for end in ends)
    if cached:
        done["cached_tokens"] = cached
    first_tokens = [end["time_to_first_token"] for end in ends if end.get("time_to_first_token") is not None]
    if first_tokens:
        done["time_to_first_token"] = min(first_tokens)
    rates = [end["tokens_per_second"] for end in ends if end.get("tokens_per_second")]
    if rates:
        done["tokens_per_second"] = sum(rates)
    return done


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
        self._choices: dict[str, tuple[JobRun, Choice]] = {}  # sequence id -> its run and choice
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
            self._choices.clear()
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
                    run.scheduler = scheduler
                    self._runs[run.job_id] = run
                    for choice in run.running:
                        scheduler.add(choice.sequence)
                        self._choices[choice.sequence.id] = (run, choice)
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
                if sequence.id in self._choices:
                    self._end_choice(*self._choices[sequence.id], "length")
            return
        except Exception as error:
            log.exception("decoding failed; the jobs of this model fail")
            # Every run of this scheduler, also one it was admitting when it failed (in no queue of its own).
            for run in [r for r in self._runs.values() if r.scheduler is scheduler]:
                self._fail(run, error)
            return
        for sequence in scheduler.sequences():
            run, choice = self._choices.get(sequence.id, (None, None))
            if choice is not None and choice.started is not None and sequence.slot is not None:
                run.start(choice, sequence.cached_tokens)
            if choice is not None and choice.started is None and sequence.slot is not None:
                run.report_reading(choice, sequence, scheduler.chunk_tokens)
        for output in outputs:
            if output.sequence.id in self._choices:
                run, choice = self._choices[output.sequence.id]
                self._take(run, choice, choice.processor.add(output.token, output.logprobs))
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

    def _take(self, run: JobRun, choice: Choice, events: list[dict[str, Any]]) -> None:
        """A choice's events into its run: a choice that ended leaves its scheduler, a job whose choices have all
        ended is finished."""
        run.take(choice, events)
        if choice.end is not None:
            self._release(run, choice)
        if run.terminal is not None:
            self._finish(run)

    def _end_choice(self, run: JobRun, choice: Choice, reason: str) -> None:
        """End a choice from outside (cancelled, context full): what it held back, then its end."""
        self._take(run, choice, choice.processor.end(reason))

    def _end(self, run: JobRun, reason: str) -> None:
        """Stop a run from outside: every choice still running ends, then the job."""
        for choice in run.running:
            self._end_choice(run, choice, reason)

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
        for choice in run.choices:
            self._release(run, choice)
        self._runs.pop(run.job_id, None)
        run.finished.set()
        if self.on_change is not None:
            self.on_change()

    def _release(self, run: JobRun, choice: Choice) -> None:
        """Take a choice's sequence out of its scheduler (its slot keeps the tokens cached)."""
        if choice.sequence is not None and self._choices.pop(choice.sequence.id, None) and run.scheduler:
            run.scheduler.finish(choice.sequence.id)
