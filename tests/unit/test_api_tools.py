"""Tool calls read from the formats chat templates use (Hermes/Qwen, Llama 3, Mistral), whole and streamed."""

from __future__ import annotations

import json
import random

import pytest

from api.tools import ArgumentsDelta, CallStart, TextDelta, ToolCallStream, parse_tool_calls

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def calls_of(text: str):
    content, calls = parse_tool_calls(text, TOOLS)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls], calls


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]',
])
def test_it_reads_a_call_in_each_templates_format(text):
    content, parsed, calls = calls_of(text)
    assert content is None
    assert parsed == [("get_weather", {"city": "Oslo"})]
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")


def test_it_reads_several_hermes_calls_and_keeps_the_text_around_them():
    content, parsed, calls = calls_of(
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    assert content == "Let me check."
    assert parsed == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert len({c["id"] for c in calls}) == 2


def test_it_reads_several_llama3_calls_separated_by_semicolons():
    _, parsed, _ = calls_of('{"name": "get_weather", "parameters": {"city": "A"}}; '
                            '{"name": "get_time", "parameters": {}}')
    assert parsed == [("get_weather", {"city": "A"}), ("get_time", {})]


@pytest.mark.parametrize("text", [
    "The weather in Oslo is fine.",
    '{"name": "not_a_tool", "parameters": {}}',
    '{"answer": 42}',
    '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',
    '<tool_call>not json</tool_call>',
])
def test_it_leaves_text_that_is_not_a_call_of_a_given_tool_as_content(text):
    content, calls = parse_tool_calls(text, TOOLS)
    assert content == text and calls == []


def test_it_parses_nothing_without_tools():
    text = '{"name": "get_weather", "parameters": {}}'
    assert parse_tool_calls(text, None) == (text, [])


def test_it_keeps_the_complete_calls_when_a_later_one_is_cut_off():
    content, parsed, calls = calls_of(
        'On it.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "argum')
    assert content == "On it."
    assert parsed == [("get_weather", {"city": "Oslo"})]


def test_a_reply_whose_only_call_is_cut_off_is_all_content():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os'
    assert parse_tool_calls(text, TOOLS) == (text, [])


def test_a_call_without_its_close_tag_at_the_end_of_the_reply_still_counts():
    _, parsed, _ = calls_of('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n')
    assert parsed == [("get_weather", {"city": "Oslo"})]


def test_a_close_tag_inside_the_arguments_does_not_end_the_call():
    _, parsed, _ = calls_of('<tool_call>{"name": "get_weather", "arguments": {"city": "</tool_call>"}}</tool_call>')
    assert parsed == [("get_weather", {"city": "</tool_call>"})]


def test_it_keeps_the_arguments_as_the_model_wrote_them():
    _, calls = parse_tool_calls('<tool_call>{"name":"get_weather","arguments":{"city":"Z\\u00fcrich"}}</tool_call>',
                                TOOLS)
    assert calls[0]["function"]["arguments"] == '{"city":"Z\\u00fcrich"}'


def test_max_calls_keeps_the_first_calls_only():
    text = ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    _, calls = parse_tool_calls(text, TOOLS, max_calls=1)
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    _, calls = parse_tool_calls('{"name": "get_weather", "parameters": {}}; {"name": "get_time", "parameters": {}}',
                                TOOLS, max_calls=1)
    assert [c["function"]["name"] for c in calls] == ["get_weather"]


def test_call_ids_follow_the_seed():
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    first, again, other = (parse_tool_calls(text, TOOLS, id_seed=seed)[1][0]["id"] for seed in ("a:0", "a:0", "a:1"))
    assert first == again != other


# --- streamed -------------------------------------------------------------------------------------------

STREAMED_REPLIES = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": [1, {"x": "}"}]}}\n</tool_call>',
    'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>\n'
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\nDone.',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n<tool_call>{"name": "get_ti',
    '<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>',
    '<tool_call>{"name": "not_a_tool", "arguments": {}}</tool_call> and <tool_call>{"name": "get_time", '
    '"arguments": {}}</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_time", "parameters": {}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
    "  The weather in Oslo is fine. <tool_ is not a tag\n",
    '{"answer": 42}',
    "[TOOL is not a tag",
    "<tool_call>not json</tool_call>",
    "",
]


def stream_in_pieces(text: str, cuts: list[int], **options):
    stream = ToolCallStream(TOOLS, id_seed="chatcmpl-1:0", **options)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    deltas = [delta for piece in pieces for delta in stream.feed(piece)] + stream.finish()
    return stream, deltas


def accumulate(deltas) -> tuple[str | None, list[dict]]:
    """As a client adds the deltas up."""
    content, calls = "", {}
    for delta in deltas:
        if isinstance(delta, TextDelta):
            content += delta.text
        elif isinstance(delta, CallStart):
            calls[delta.index] = {"id": delta.id, "type": "function",
                                  "function": {"name": delta.name, "arguments": ""}}
        else:
            calls[delta.index]["function"]["arguments"] += delta.text
    return content or None, [calls[index] for index in sorted(calls)]


@pytest.mark.parametrize("text", STREAMED_REPLIES)
def test_a_streamed_reply_adds_up_to_the_whole_one_however_it_is_cut(text):
    whole = parse_tool_calls(text, TOOLS, id_seed="chatcmpl-1:0")
    rng, places = random.Random(text), range(1, len(text))
    random_cuts = [sorted(rng.sample(places, min(len(places), rng.randint(1, 12)))) for _ in range(30)]
    for cuts in [[], list(places), *random_cuts]:  # whole, a character at a time, in random pieces
        stream, deltas = stream_in_pieces(text, cuts)
        assert (stream.content(), [c.id for c in stream.calls()]) == (whole[0], [c["id"] for c in whole[1]])
        if whole[1] or not any(isinstance(d, CallStart) for d in deltas):  # else: a call that broke off
            assert accumulate(deltas) == whole, (text, cuts)


def test_a_hermes_call_streams_its_arguments_as_they_are_written():
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    stream = ToolCallStream(TOOLS, id_seed="s")
    seen = [(piece, stream.feed(piece)) for piece in text]
    deltas = [delta for _, per_piece in seen for delta in per_piece] + stream.finish()
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "Sure."
    start = next(d for d in deltas if isinstance(d, CallStart))
    assert start == CallStart(0, stream.calls()[0].id, "get_weather")
    pieces = [d.text for d in deltas if isinstance(d, ArgumentsDelta)]
    assert len(pieces) > 5 and "".join(pieces) == '{"city": "Oslo"}'
    # the call is known before its close tag arrives, and its arguments end with their brace
    assert any(isinstance(d, CallStart) for piece, per_piece in seen[:text.index("Oslo")] for d in per_piece)
    assert stream.calls()[0].complete


def test_text_is_sent_as_it_comes_until_a_call_could_start():
    stream = ToolCallStream(TOOLS)
    assert stream.feed("Hello") == [TextDelta("Hello")]
    assert stream.feed(" there <tool") == [TextDelta(" there")]  # "<tool" may open a call; the space may end it
    assert stream.feed("s> are") == [TextDelta(" <tools> are")]
    assert stream.finish() == []


def test_a_llama3_or_mistral_reply_comes_whole_at_the_end():
    stream = ToolCallStream(TOOLS)
    assert stream.feed('{"name": "get_weather", ') == []
    assert stream.feed('"parameters": {"city": "A"}}') == []
    start, arguments = stream.finish()
    assert start.name == "get_weather" and json.loads(arguments.text) == {"city": "A"}


def test_a_streamed_call_cut_off_is_not_among_the_calls():
    stream, deltas = stream_in_pieces('<tool_call>{"name": "get_weather", "arguments": {"ci', [20, 40])
    assert any(isinstance(d, CallStart) for d in deltas)  # sent while it came: a stream cannot take it back
    assert stream.calls() == [] and stream.content() == '<tool_call>{"name": "get_weather", "arguments": {"ci'
