"""Tool calls parsed from the formats chat templates use (Hermes/Qwen, Llama 3, Mistral)."""

from __future__ import annotations

import json

import pytest

from api.tools import parse_tool_calls

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
