"""Requests run end to end on a loaded BatchModel, the way a worker runs them: the scheduler decodes every
sequence together and an OutputProcessor per sequence turns its tokens into events. Plain functions, no fixtures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inference.engine.base import GenerationRequest
from inference.engine.output import OutputProcessor
from inference.engine.scheduler import Scheduler, Sequence


@dataclass
class Run:
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # every sampled token, the end-of-generation one too
    cached_tokens: int = 0  # of the prompt, reused from the prefix cache

    @property
    def text(self) -> str:
        return "".join(e["text"] for e in self.events if e["kind"] == "token")

    @property
    def done(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def finish_reason(self) -> str:
        return self.done["finish_reason"]

    @property
    def logprobs(self) -> list[dict[str, Any]]:
        return [entry for e in self.events if e["kind"] == "token" for entry in e.get("logprobs", [])]


def run_requests(model, requests: list[GenerationRequest], *, scheduler: Scheduler | None = None) -> list[Run]:
    """Every request to its end, all decoded together (as many at once as the scheduler has slots)."""
    scheduler = scheduler or Scheduler(model)
    runs = [Run() for _ in requests]
    active: dict[str, tuple[Sequence, OutputProcessor, Run]] = {}
    for index, request in enumerate(requests):
        prompt = model.tokenize(model.render_prompt(request))
        budget = model.n_ctx - len(prompt)
        if request.max_tokens is not None:
            budget = min(budget, request.max_tokens)
        sequence = Sequence(id=str(index), user=f"user{index % 3}", tokens=list(prompt),
                            sampler=model.sampler(request, prompt, len(prompt)), n_prompt=len(prompt))
        output = OutputProcessor(model.detokenize, model.eog_ids, budget, stop=request.stop, n_prompt=len(prompt),
                                 logprobs=request.logprobs is not None)
        runs[index].events.append(output.started())
        active[sequence.id] = (sequence, output, runs[index])
        scheduler.add(sequence)
    while active:
        for step in scheduler.step():
            sequence, output, run = active[step.sequence.id]
            run.ids.append(step.token)
            run.events += output.add(step.token, step.logprobs)
            if output.finished:
                run.cached_tokens = sequence.cached_tokens
                scheduler.finish(sequence.id)
                sequence.sampler.close()
                del active[sequence.id]
    return runs


def run_one(model, request: GenerationRequest, **options) -> Run:
    return run_requests(model, [request], **options)[0]
