"""n choices (one job per prompt, its choices decoded together) and several completion prompts, whole and
streamed, on a real embedded server."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict

import httpx

from tests.conftest import openai_client
from tests.factories import TINY_GGUF_EOS_ID, TINY_GGUF_IM_END_ID
from tests.integration.sse_client import events, id_key

SAMPLED = {"temperature": 1.0, "top_p": 1.0, "seed": 11}
NO_END = {str(TINY_GGUF_EOS_ID): -100, str(TINY_GGUF_IM_END_ID): -100}


def job_rows(server) -> dict[str, tuple]:
    """Every job of the server: id -> (request JSON, completion tokens, output text)."""
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as connection:
        rows = connection.execute(
            "SELECT id, request, completion_tokens, output_text FROM inference_generationjob").fetchall()
    return {str(job_id).replace("-", ""): (json.loads(request), tokens, text) for job_id, request, tokens, text in rows}


def texts_by_choice(received) -> dict[int, str]:
    texts = defaultdict(str)
    for event in received:
        for choice in (event.data.get("choices") or ()) if isinstance(event.data, dict) else ():
            texts[choice["index"]] += (choice.get("delta") or {}).get("content") or ""
    return dict(texts)


def test_it_answers_n_chat_choices_each_a_sample_of_its_own(embedded_server):
    client = openai_client(embedded_server)
    arguments = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10, **SAMPLED}
    completion = client.chat.completions.create(n=3, **arguments)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content for c in completion.choices]
    assert len(set(texts)) > 1  # choice i samples with seed + i
    assert completion.usage.completion_tokens == 30
    single = client.chat.completions.create(**arguments)
    assert completion.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt is read once for all choices
    # (The same seed is not promised the same text here: decoded beside other sequences, a batch's floating-point
    # sums differ in the last digits, which can change a sampled token; docs/api.md says so.)


def test_it_streams_n_chat_choices_with_their_indexes(embedded_server):
    client = openai_client(embedded_server)
    arguments = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10,
                 "temperature": 0}
    whole = client.chat.completions.create(n=2, **arguments)
    chunks = list(client.chat.completions.create(n=2, stream=True, stream_options={"include_usage": True},
                                                 **arguments))
    texts, finishes = defaultdict(str), {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: whole.choices[0].message.content, 1: whole.choices[1].message.content}
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_it_completes_several_prompts_n_times_each_in_order(embedded_server):
    client = openai_client(embedded_server)
    prompts = ["Once upon a time", "The weather today"]
    completion = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=0)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    for position, prompt in enumerate(prompts):
        alone = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0).choices[0].text
        assert completion.choices[2 * position].text == completion.choices[2 * position + 1].text == alone
    assert completion.usage.completion_tokens == 24


def test_it_runs_n_chat_choices_as_one_job(embedded_server):
    before = job_rows(embedded_server)
    reply = httpx.post(f"{embedded_server.base_url}/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {embedded_server.api_key}"},
                       json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "n": 3,
                             "max_tokens": 10, "logit_bias": NO_END, **SAMPLED})
    new = {job_id: row for job_id, row in job_rows(embedded_server).items() if job_id not in before}
    assert list(new) == [reply.headers["x-hearth-job"].replace("-", "")]
    request, completion_tokens, output_text = next(iter(new.values()))
    answer = reply.json()
    assert request["n"] == 3 and completion_tokens == 30 == answer["usage"]["completion_tokens"]
    assert output_text == answer["choices"][0]["message"]["content"]  # the row keeps the first choice's text


def test_an_n_choice_stream_resumes_after_its_last_event_id_with_no_gap_and_no_duplicate(embedded_server):
    headers = {"Authorization": f"Bearer {embedded_server.api_key}"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Count"}], "n": 3, "max_tokens": 12,
            "logit_bias": NO_END, "stream": True, "stream_options": {"include_usage": True}, **SAMPLED}
    first = []
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/chat/completions", json=body, headers=headers,
                      timeout=60) as response:
        job = response.headers["x-hearth-job"]
        for event in events(response):
            first.append(event)
            if len(first) >= 12:
                break
    url = f"{embedded_server.base_url}/v1/chat/completions/chatcmpl-{job.replace('-', '')}"
    with httpx.stream("GET", url, params={"stream": "true"}, timeout=60,
                      headers={**headers, "Last-Event-ID": [e.id for e in first if e.id][-1]}) as response:
        assert response.status_code == 200
        rest = list(events(response))
    whole = httpx.get(url, headers=headers, timeout=60).json()
    ids = [id_key(e.id) for e in first + rest if e.id]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    expected = {c["index"]: c["message"]["content"] for c in whole["choices"]}
    assert len(expected) == 3 and texts_by_choice(first + rest) == expected
    finishes = [c["index"] for e in first + rest if isinstance(e.data, dict) for c in e.data["choices"]
                if c.get("finish_reason")]
    assert sorted(finishes) == [0, 1, 2]
    usage = [e.data["usage"] for e in rest if isinstance(e.data, dict) and e.data.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] == 36 == whole["usage"]["completion_tokens"]
    assert usage[0]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert rest[-1].done
