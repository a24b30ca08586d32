"""A job of n choices in a worker (inference/runner.py and worker.py, in this process, on the tiny GGUF model):
n sequences that share the prompt's read, one stream whose events carry their "choice", each choice's end as a
"choice_end", one "done" with the usage of all; a cancel ends every choice; a job taken over replays each choice
from its own events and goes on with those that had not ended. Against its API key's limit it counts n."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest
from django.contrib.auth import get_user_model

from api.limits import check_concurrency
from api.models import ApiKey
from inference import leases
from inference.engine.base import GenerationRequest
from inference.engine.sampling import SamplingParams
from inference.models import GenerationJob, JobStatus
from inference.relay import get_relay
from inference.runner import run_generation_job
from inference.services import model_import
from inference.specs import request_to_json
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

NO_END = {factories.TINY_GGUF_EOS_ID: -100.0, factories.TINY_GGUF_IM_END_ID: -100.0}
WORKER = "w1"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return factories.build_tiny_gguf(tmp_path_factory.mktemp("choices") / "tiny.gguf")


@pytest.fixture
def tiny(tiny_file):
    return model_import(tiny_file, name="tiny")


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="alice-password")


def queue_job(owner, model, prompt: str, *, n: int = 3, max_tokens: int | None = 12, api_key=None
              ) -> GenerationJob:
    request = GenerationRequest(prompt=prompt, n=n, max_tokens=max_tokens,
                                sampling=SamplingParams(temperature=0, logit_bias=NO_END))
    job = GenerationJob.objects.create(owner=owner, model=model, model_name=model.name, api_key=api_key,
                                       kind=GenerationJob.Kind.COMPLETION, request=request_to_json(request))
    get_relay().watch(str(job.id), 600)
    return job


def claim(job: GenerationJob) -> GenerationJob:
    claimed = leases.claim_next(WORKER)
    assert claimed is not None and claimed.id == job.id
    return claimed


def events_of(job: GenerationJob) -> list[dict]:
    return [event for _, event in get_relay().read(str(job.id))]


def per_choice(events: list[dict]) -> dict[int, list[dict]]:
    choices = defaultdict(list)
    for event in events:
        if "choice" in event:
            choices[event["choice"]].append(event)
    return choices


def text(events: list[dict]) -> str:
    return "".join(event["text"] for event in events if event["kind"] == "token")


def test_it_runs_n_choices_as_one_job_whose_prompt_is_read_once(alice, tiny):
    job = claim(queue_job(alice, tiny, "Once upon a time in a village", n=3))
    run_generation_job(job, WORKER)
    events = events_of(job)
    done, choices = events[-1], per_choice(events[:-1])
    assert len(events[:-1]) == sum(len(c) for c in choices.values())  # every event but the last names its choice
    assert sorted(choices) == [0, 1, 2]
    for events_of_choice in choices.values():
        kinds = [event["kind"] for event in events_of_choice]
        assert kinds[0] == "started" and kinds[-1] == "choice_end" and set(kinds[1:-1]) == {"token"}
        assert events_of_choice[-1]["completion_tokens"] == 12
    prompt_tokens = choices[0][0]["prompt_tokens"]
    for index in (1, 2):  # the other choices copied the first one's read of the prompt
        assert choices[index][0]["cached_tokens"] == prompt_tokens - 1
        assert choices[index][-1]["cached_tokens"] == prompt_tokens - 1
    assert done["kind"] == "done" and done["choices"] == 3 and done["finish_reason"] == "length"
    assert (done["prompt_tokens"], done["completion_tokens"]) == (prompt_tokens, 36)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and (job.prompt_tokens, job.completion_tokens) == (prompt_tokens, 36)
    assert job.output_text == text(choices[0]) == text(choices[1]) == text(choices[2])  # greedy: the same text


def test_a_job_of_one_choice_streams_its_events_as_before(alice, tiny):
    job = claim(queue_job(alice, tiny, "A job of one choice", n=1, max_tokens=5))
    run_generation_job(job, WORKER)
    events = events_of(job)
    assert [event["kind"] for event in events] == ["started"] + ["token"] * (len(events) - 2) + ["done"]
    assert not any("choice" in event or "choices" in event for event in events)
    assert events[-1]["completion_tokens"] == 5


def test_cancelling_the_job_ends_every_choice(alice, tiny):
    job = claim(queue_job(alice, tiny, "Tell me a very long tale", n=3, max_tokens=None))
    worker = threading.Thread(target=run_generation_job, args=(job, WORKER))
    worker.start()
    deadline = time.monotonic() + 60
    while len({e["choice"] for e in events_of(job) if e["kind"] == "token"}) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    get_relay().request_cancel(str(job.id))
    worker.join(60)
    events = events_of(job)
    ends = [event for event in events if event["kind"] == "choice_end"]
    assert sorted(end["choice"] for end in ends) == [0, 1, 2]
    assert {end["finish_reason"] for end in ends} == {"cancelled"}
    assert events[-1]["kind"] == "done" and events[-1]["finish_reason"] == "cancelled"
    assert [event["kind"] for event in events].count("done") == 1
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert job.completion_tokens == sum(end["completion_tokens"] for end in ends)


def test_a_job_taken_over_replays_each_choice_and_goes_on_with_those_that_had_not_ended(alice, tiny):
    prompt = "The river ran down to the sea"
    whole = claim(queue_job(alice, tiny, prompt, n=3))
    run_generation_job(whole, WORKER)
    uninterrupted = per_choice(events_of(whole))
    # What a worker that died had published: choice 0 part-way, choice 1 to its end, choice 2 only started.
    tokens_0 = [e for e in uninterrupted[0] if e["kind"] == "token"]
    sent = ([uninterrupted[0][0], uninterrupted[1][0], uninterrupted[2][0]] + tokens_0[:3] + uninterrupted[1][1:])
    job = queue_job(alice, tiny, prompt, n=3)
    relay = get_relay()
    relay.claim(str(job.id), "ghost")
    relay.publisher(str(job.id), "ghost").publish_many(sent)
    run_generation_job(claim(job), WORKER)
    events = events_of(job)
    later = per_choice(events[len(sent):-1])
    assert sorted(later) == [0, 2] and all(e["kind"] != "started" for e in later[0])  # choice 1 had ended
    assert [e["kind"] for e in later[2]][0] == "token"  # its "started" went out before
    together = per_choice(events[:-1])
    for index in range(3):
        assert text(together[index]) == text(uninterrupted[index])  # no gap, no duplicate
        assert [e["kind"] for e in together[index]].count("choice_end") == 1
    assert events[-1]["kind"] == "done" and events[-1]["completion_tokens"] == 36
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.completion_tokens == 36
    assert job.output_text == text(uninterrupted[0])


def test_a_job_of_n_choices_counts_as_n_generations_against_its_keys_limit(alice, tiny):
    key, _ = ApiKey.objects.issue(alice)
    key.max_concurrent_jobs = 4
    key.save()
    queue_job(alice, tiny, "three at once", n=3, api_key=key)
    assert check_concurrency(key, 1) is None
    over = check_concurrency(key, 2)
    assert over.status_code == 429 and "already has 3 generations" in json.loads(over.content)["error"]["message"]


def test_a_prompt_longer_than_a_chunk_reports_how_much_of_it_is_read_before_the_first_token(alice, tiny, settings):
    from inference import runner

    def fresh_engine():
        runner.engine().stop()
        runner.engine.cache_clear()

    fresh_engine()
    settings.HEARTH_PREFILL_CHUNK_TOKENS = 16
    try:
        job = claim(queue_job(alice, tiny, "word " * 60, n=1, max_tokens=3))
        run_generation_job(job, WORKER)
    finally:
        settings.HEARTH_PREFILL_CHUNK_TOKENS = 512
        fresh_engine()
    events = events_of(job)
    kinds = [event["kind"] for event in events]
    first_token = kinds.index("token")
    progress = [event for event in events if event["kind"] == "progress"]
    assert kinds[0] == "started" and set(kinds[1:first_token]) == {"progress"}
    assert "progress" not in kinds[first_token:]
    total = events[0]["prompt_tokens"]
    assert [event["prompt_tokens_read"] for event in progress] == list(range(16, total, 16))
    assert {event["prompt_tokens"] for event in progress} == {total}
