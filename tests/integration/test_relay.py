"""The relay, in-process and on real Redis Streams: ordered, numbered, lossless, resumable, with cancel flags."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from inference.relay import InProcessRelay, RedisStreamRelay, StreamLost, publish_together


@pytest.fixture(params=["in-process", "redis"])
def relay(request):
    if request.param == "in-process":
        return InProcessRelay(ttl_seconds=60)
    return RedisStreamRelay(request.getfixturevalue("private_redis").url, ttl_seconds=60)


def collect(relay, job_id, after=0, limit=None):
    async def gather():
        out = []
        async for index, event in relay.subscribe(job_id, after):
            out.append((index, event))
            if limit and len(out) >= limit:
                break
        return out

    return asyncio.run(gather())


def publish_tokens(relay, job_id, count, delay=0.0):
    import time

    relay.claim(job_id, "worker-a")  # a stream has one writer: the worker that claimed the job
    publisher = relay.publisher(job_id, "worker-a")
    publisher.publish({"kind": "started", "prompt_tokens": 3})
    for i in range(count):
        if delay:
            time.sleep(delay)
        publisher.publish({"kind": "token", "text": f"t{i}"})
    publisher.publish({"kind": "done", "finish_reason": "stop"})


def test_it_delivers_every_event_in_order_with_its_index(relay):
    job = str(uuid.uuid4())
    publish_tokens(relay, job, 50)
    events = collect(relay, job)
    assert [i for i, _ in events] == list(range(1, 53))
    assert [e["text"] for _, e in events[1:-1]] == [f"t{i}" for i in range(50)]
    assert events[-1][1]["kind"] == "done"


def test_it_resumes_after_an_index_with_no_gap_and_no_duplicate(relay):
    job = str(uuid.uuid4())
    publish_tokens(relay, job, 10)
    assert [i for i, _ in collect(relay, job, after=7)] == list(range(8, 13))


def test_it_waits_for_events_published_later_by_another_thread(relay):
    job = str(uuid.uuid4())
    writer = threading.Thread(target=publish_tokens, args=(relay, job, 20, 0.005))
    writer.start()
    events = collect(relay, job)
    writer.join()
    assert [i for i, _ in events] == list(range(1, 23))


def test_it_keeps_a_slow_subscriber_lossless(relay):
    job = str(uuid.uuid4())
    publish_tokens(relay, job, 2000)

    async def slow():
        out = []
        async for index, _event in relay.subscribe(job, 0):
            out.append(index)
            if index % 500 == 0:
                await asyncio.sleep(0.05)
        return out

    assert asyncio.run(slow()) == list(range(1, 2003))


def test_it_raises_and_reads_cancel_flags(relay):
    job = str(uuid.uuid4())
    assert not relay.is_cancelled(job)
    relay.request_cancel(job)
    assert relay.is_cancelled(job)


def test_it_ends_a_job_no_worker_took_with_one_terminal_event(relay):
    job = str(uuid.uuid4())
    relay.publish_terminal(job, {"kind": "done", "finish_reason": "cancelled"})
    assert collect(relay, job) == [(1, {"kind": "done", "finish_reason": "cancelled"})]


def test_it_refuses_out_of_order_indexes_and_other_writers_in_process():
    relay = InProcessRelay(ttl_seconds=60)
    relay.claim("job", "worker-a")
    relay.append("job", "worker-a", [(1, {"kind": "token"})])
    with pytest.raises(StreamLost, match="expected event 2"):
        relay.append("job", "worker-a", [(3, {"kind": "token"})])
    with pytest.raises(StreamLost, match="written by worker-a"):
        relay.append("job", "worker-b", [(2, {"kind": "token"})])


def test_an_append_sent_again_after_a_lost_reply_is_taken_once_and_the_stream_stays_its_owners(relay):
    # The owner's first try reached the relay but its reply was lost (a timeout, a Redis restart): the owner sends
    # the same events again. They are not doubled, and the owner is not told its job was taken over.
    job = str(uuid.uuid4())
    relay.claim(job, "worker-a")
    first = [(1, {"kind": "started"}), (2, {"kind": "token", "text": "a"})]
    relay.append(job, "worker-a", first)
    relay.append(job, "worker-a", [*first, (3, {"kind": "token", "text": "b"})])
    relay.append(job, "worker-a", [(4, {"kind": "done", "finish_reason": "stop"})])
    assert [index for index, _ in collect(relay, job)] == [1, 2, 3, 4]
    assert relay.read(job, 2) == [(3, {"kind": "token", "text": "b"}), (4, {"kind": "done", "finish_reason": "stop"})]


def test_a_step_publishes_every_jobs_events_together_and_tells_which_stream_was_lost(relay):
    mine, taken = str(uuid.uuid4()), str(uuid.uuid4())
    relay.claim(mine, "worker-a")
    relay.claim(taken, "worker-a")
    first, second = relay.publisher(mine, "worker-a"), relay.publisher(taken, "worker-a")
    relay.claim(taken, "worker-b")  # taken over meanwhile
    results = publish_together([(first, [{"kind": "started"}, {"kind": "token", "text": "a"}]),
                                (second, [{"kind": "token", "text": "x"}])])
    assert results[0] is None and isinstance(results[1], StreamLost)
    assert first.index == 2 and second.index == 0
    assert publish_together([(first, [{"kind": "done", "finish_reason": "stop"}])]) == [None]
    assert [index for index, _ in collect(relay, mine)] == [1, 2, 3]
    assert relay.read(taken) == []


def test_paced_batches_gather_a_fast_stream_into_few_writes_and_lose_nothing(relay):
    job = str(uuid.uuid4())
    writer = threading.Thread(target=publish_tokens, args=(relay, job, 60), kwargs={"delay": 0.005})

    async def gather():
        batches, waits = [], []
        loop = asyncio.get_running_loop()
        last = loop.time()
        async for batch in relay.subscribe_batches(job, 0, interval=0.1):
            waits.append(loop.time() - last)
            last = loop.time()
            batches.append(batch)
        return batches, waits

    writer.start()
    batches, waits = asyncio.run(gather())
    writer.join()
    indexes = [index for batch in batches for index, _ in batch]
    assert indexes == list(range(1, 63))  # started, 60 tokens, done: numbered, in order, nothing twice
    assert batches[-1][-1][1]["kind"] == "done"
    assert len(batches) <= 8  # 60 tokens 5 ms apart, fetched at most every 100 ms
    assert all(wait >= 0.09 for wait in waits[1:])


def test_the_first_batch_comes_at_once_whatever_the_interval(relay):
    job = str(uuid.uuid4())
    relay.claim(job, "worker-a")
    relay.publisher(job, "worker-a").publish({"kind": "started", "prompt_tokens": 3})

    async def first():
        loop = asyncio.get_running_loop()
        started = loop.time()
        batches = relay.subscribe_batches(job, 0, interval=5.0)
        batch = await anext(batches)
        await batches.aclose()
        return batch, loop.time() - started

    batch, waited = asyncio.run(first())
    assert batch == [(1, {"kind": "started", "prompt_tokens": 3})]
    assert waited < 1.0
