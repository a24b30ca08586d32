"""The scheduler over real tiny models (llama.cpp and the torch engine): continuous batching, chunked prompts,
the prefix cache in slots and in host memory, fair admission, and room made in a full KV cache — every output
equal to the same sequence run alone on a cold model."""

from __future__ import annotations

import pytest

from inference.engine.base import GenerationRequest
from inference.engine.sampling import SamplingParams
from inference.engine.scheduler import Scheduler, Sequence
from tests.unit.test_batch_models import load

GREEDY = GenerationRequest(prompt="", sampling=SamplingParams(temperature=0))
N_CTX = 256


@pytest.fixture(scope="module", params=["llamacpp", "torch"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tests.factories import CHATML, build_tiny_gguf, build_tiny_hf_dir

    folder = tmp_path_factory.mktemp("scheduler")
    return {"llamacpp": build_tiny_gguf(folder / "tiny.gguf", chat_template=CHATML, context_length=N_CTX),
            "torch": build_tiny_hf_dir(folder / "tiny-hf", context_length=N_CTX)}


@pytest.fixture(scope="module")
def model(backend, files):
    loaded = load(backend, files[backend], n_ctx=N_CTX, n_slots=4)
    yield loaded
    loaded.close()


def sequence(model, name: str, text: str, user: str = "alice", group: str = "") -> Sequence:
    ids = model.tokenize(text)
    return Sequence(id=name, user=user, tokens=list(ids), sampler=model.sampler(GREEDY, ids, len(ids)),
                    n_prompt=len(ids), group=group)


def run(scheduler: Scheduler, sequences: list[Sequence], n: int, *, trace: list | None = None) -> dict[str, list]:
    """Add the sequences, step until each has n new tokens; the tokens per sequence id."""
    out: dict[str, list[int]] = {s.id: [] for s in sequences}
    for s in sequences:
        scheduler.add(s)
    while scheduler.has_work():
        outputs = scheduler.step()
        if trace is not None:
            trace.append([(o.sequence.id, o.token) for o in outputs])
        for o in outputs:
            out[o.sequence.id].append(o.token)
            if len(out[o.sequence.id]) >= n:
                scheduler.finish(o.sequence.id)
    for s in sequences:
        s.sampler.close()
    return out


def cold(model, text: str, n: int) -> list[int]:
    """The same sequence alone in a scheduler whose cache is empty."""
    scheduler = Scheduler(model, cache_bytes=0)
    scheduler.clear()
    return run(scheduler, [sequence(model, "cold", text)], n)["cold"]


TEXTS = ["The quick brown fox", "Hearth serves a team", "one two three four five six seven", "a b c"]


def test_it_decodes_sequences_together_each_as_if_alone(model):
    expected = {f"s{i}": cold(model, text, 10) for i, text in enumerate(TEXTS)}
    scheduler = Scheduler(model)
    scheduler.clear()
    got = run(scheduler, [sequence(model, f"s{i}", text) for i, text in enumerate(TEXTS)], 10)
    assert got == expected


def test_a_long_prompt_is_read_in_chunks_while_the_others_keep_decoding(model):
    scheduler = Scheduler(model, chunk_tokens=8)
    scheduler.clear()
    short = sequence(model, "short", "a b c")
    long_text = " ".join(["one two three four five six seven eight nine ten"] * 4)
    long = sequence(model, "long", long_text)
    assert len(long.tokens) > 24
    scheduler.add(short)
    assert [o.sequence.id for o in scheduler.step()] == ["short"]  # its prompt fits one chunk
    scheduler.add(long)
    steps, got = [], []
    while len(got) < 6:
        outputs = scheduler.step()
        steps.append({o.sequence.id for o in outputs})
        got += [o.token for o in outputs if o.sequence.id == "long"]
    scheduler.finish("long")
    scheduler.finish("short")
    # While the long prompt is read (8 tokens a step), the short sequence gets a token every step.
    reading_steps = -(-(long.n_prompt - long.cached_tokens) // 8)
    assert reading_steps > 3 and all("short" in step for step in steps)
    assert all("long" not in step for step in steps[: reading_steps - 1])
    assert got[:6] == cold(model, long_text, 6)
    short.sampler.close()
    long.sampler.close()


def test_a_conversation_continues_from_its_slot_with_the_same_output(model):
    scheduler = Scheduler(model)
    scheduler.clear()
    first_turn = "Hearth serves a team and keeps every chat"
    run(scheduler, [sequence(model, "turn1", first_turn)], 8)
    second_turn = first_turn + " and then some more words"
    again = sequence(model, "turn2", second_turn)
    got = run(scheduler, [again], 8)["turn2"]
    assert again.cached_tokens >= len(model.tokenize(first_turn)) - 1
    assert got == cold(model, second_turn, 8)


def test_a_conversation_pushed_out_of_its_slot_comes_back_from_host_memory(model):
    scheduler = Scheduler(model, cache_bytes=64 * 1024**2, slots=1)
    scheduler.clear()
    chat = "one two three four five six seven eight nine ten " * 4
    run(scheduler, [sequence(model, "a1", chat)], 4)
    run(scheduler, [sequence(model, "b1", "a completely different conversation " * 4)], 4)
    assert len(scheduler.prefix_store) == 1  # the first chat, saved when its slot was taken
    back = sequence(model, "a2", chat + " eleven twelve")
    got = run(scheduler, [back], 6)["a2"]
    assert back.cached_tokens >= len(model.tokenize(chat)) - 1
    assert got == cold(model, chat + " eleven twelve", 6)


def test_choices_of_one_prompt_share_its_prefill(model):
    scheduler = Scheduler(model)
    scheduler.clear()
    text = "The quick brown fox jumps over the lazy dog " * 3
    first, second = sequence(model, "c0", text), sequence(model, "c1", text)
    got = run(scheduler, [first, second], 6)
    assert second.cached_tokens == second.n_prompt - 1  # copied from the first choice's slot
    assert got["c0"] == got["c1"] == cold(model, text, 6)


def test_the_choices_of_one_request_read_even_a_short_prompt_once(model):
    scheduler = Scheduler(model)
    scheduler.clear()
    text = "a b c"
    choices = [sequence(model, f"job:{i}", text, group="job") for i in range(3)]
    got = run(scheduler, choices, 6)
    assert [c.cached_tokens for c in choices] == [0] + [c.n_prompt - 1 for c in choices[1:]]
    assert got["job:0"] == got["job:1"] == got["job:2"] == cold(model, text, 6)
    scheduler.clear()
    strangers = [sequence(model, f"other:{i}", text) for i in range(2)]  # no group: each reads a short prompt
    run(scheduler, strangers, 2)
    assert [s.cached_tokens for s in strangers] == [0, 0]


def test_users_are_admitted_in_turn(model):
    scheduler = Scheduler(model, slots=1)
    scheduler.clear()
    burst = [sequence(model, f"x{i}", f"burst {i}", user="xavier") for i in range(3)]
    other = sequence(model, "y0", "a teammate's question", user="yasmin")
    order = []
    for s in [*burst, other]:
        scheduler.add(s)
    while scheduler.has_work():
        for output in scheduler.step():
            order.append(output.sequence.id)
            scheduler.finish(output.sequence.id)
    assert order == ["x0", "y0", "x1", "x2"]
    for s in [*burst, other]:
        s.sampler.close()


def test_a_full_kv_cache_sends_the_newest_sequence_back_and_every_output_stays_the_same(backend, files):
    if backend == "llamacpp":
        pytest.skip("llama.cpp's slots each have a context of their own: together they cannot outgrow a shared pool")
    small = load(backend, files[backend], n_ctx=64, n_slots=2, kv_tokens=96)
    try:
        texts = ["one two three four five", "seven eight nine ten eleven"]
        lengths = [len(small.tokenize(text)) for text in texts]
        n = 60 - max(lengths)  # each fits its slot's context alone; together they overflow the shared cells
        assert n > 10 and sum(lengths) + 2 * n > small.kv_capacity
        expected = {f"k{i}": cold(small, text, n) for i, text in enumerate(texts)}
        scheduler = Scheduler(small)
        scheduler.clear()
        got = run(scheduler, [sequence(small, f"k{i}", text) for i, text in enumerate(texts)], n)
        assert got == expected
    finally:
        small.close()


def test_an_aborted_sequence_frees_its_slot_for_the_next(model):
    scheduler = Scheduler(model, slots=1)
    scheduler.clear()
    first, second = sequence(model, "first", "a b c"), sequence(model, "second", "d e f")
    scheduler.add(first)
    scheduler.add(second)
    assert [o.sequence.id for o in scheduler.step()] == ["first"]
    scheduler.abort("first")
    assert [o.sequence.id for o in scheduler.step()] == ["second"]
    scheduler.finish("second")
    assert not scheduler.has_work()
    first.sampler.close()
    second.sampler.close()


def test_new_sequences_go_beside_the_running_ones_where_the_model_batches_only_adjacent_slots(model):
    if not getattr(model, "batches_adjacent_slots_only", False):
        pytest.skip("this backend decodes any slots together in one forward pass")
    scheduler = Scheduler(model)
    scheduler.clear()
    # Slots 0 and 2 keep the shortest conversations, 1 and 3 long ones: the two cheapest slots to reuse are apart.
    short, long = "a b", "the cat sat on the mat and then the dog came in and sat down beside it " * 2
    run(scheduler, [sequence(model, name, text) for name, text in
                    (("s0", short), ("l1", long), ("s2", short), ("l3", long))], 2)
    assert [len(slot.tokens) < 10 for slot in scheduler._slots] == [True, False, True, False]
    newcomers = [sequence(model, "x", "one two three"), sequence(model, "y", "four five six")]
    for s in newcomers:
        scheduler.add(s)
    scheduler.step()
    x, y = (s.slot for s in newcomers)
    assert abs(x - y) == 1  # one forward pass a step for both, not one each
    for s in newcomers:
        scheduler.finish(s.id)
        s.sampler.close()


def test_a_conversation_cached_apart_from_the_running_slots_is_copied_beside_them(model):
    if not getattr(model, "batches_adjacent_slots_only", False):
        pytest.skip("this backend decodes any slots together in one forward pass")
    scheduler = Scheduler(model, cache_bytes=0)
    scheduler.clear()
    chat = "Hearth serves a team and keeps every chat it has had"
    others = ["the cat sat on the mat and then the dog came in and sat down beside it " * 2,
              "a completely different conversation about boats and the sea " * 2, "a b"]
    run(scheduler, [sequence(model, "chat", chat)] + [sequence(model, f"o{i}", t) for i, t in enumerate(others)], 2)
    # Slot 0 keeps the chat and slot 3 the shortest conversation, so a newcomer starts in slot 3, apart from 0.
    newcomer = sequence(model, "newcomer", "one two three")
    scheduler.add(newcomer)
    scheduler.step()
    assert newcomer.slot == 3
    again = sequence(model, "again", chat + " and then some more words")
    scheduler.add(again)
    got = []
    while len(got) < 6:
        got += [o.token for o in scheduler.step() if o.sequence.id == "again"]
    assert again.slot == 2  # beside the newcomer: one forward pass a step for both
    assert again.cached_tokens >= len(model.tokenize(chat)) - 1  # its cache came along
    assert got == cold(model, chat + " and then some more words", 6)
    for s in (newcomer, again):
        scheduler.finish(s.id)
        s.sampler.close()
