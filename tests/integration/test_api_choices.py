"""n choices (one job each) and several completion prompts, whole and streamed, on a real embedded server."""

from __future__ import annotations

from collections import defaultdict

from tests.conftest import openai_client

SAMPLED = {"temperature": 1.0, "top_p": 1.0, "seed": 11}


def test_it_answers_n_chat_choices_each_a_sample_of_its_own(embedded_server):
    client = openai_client(embedded_server)
    arguments = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10, **SAMPLED}
    completion = client.chat.completions.create(n=3, **arguments)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content for c in completion.choices]
    assert len(set(texts)) > 1  # choice i samples with seed + i
    assert completion.usage.completion_tokens == 30
    single = client.chat.completions.create(**arguments)
    assert completion.usage.prompt_tokens == 3 * single.usage.prompt_tokens
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
