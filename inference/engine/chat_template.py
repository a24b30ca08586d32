"""Chat templates: find the model's own, render it in a sandbox, or fall back to a convention.

A chat template is Jinja code that ships inside model files, so it is untrusted input. We render it
the way Hugging Face transformers does (`ImmutableSandboxedEnvironment`, `trim_blocks`,
`lstrip_blocks`, the `loopcontrols` extension, `raise_exception`, `strftime_now`, a `tojson` that
keeps non-ASCII text), and harden that sandbox further:

- any access to an underscore or internal attribute raises at once (Jinja's sandbox would render an
  empty string and go on), and so does calling a mutating method such as `list.append`;
- every `for` loop, function and macro call and chunk of output checks a per-render budget: at most
  `MAX_LOOP_STEPS` loop iterations and `RENDER_SECONDS` of wall time;
- operators, filters and string methods that could build huge values (`'x' * n`, `**`, `%`,
  `|indent`, `|replace`, `|join`, `str.ljust`, `str.format`, ...) are estimated before they run and
  refused when the result would exceed `MAX_VALUE_CHARS`; integer arguments are capped at
  `MAX_INT_ARGUMENT`;
- the rendered prompt is capped at `MAX_RENDERED_CHARS`;
- the template sees plain JSON data only (messages, tools, extra variables), never a caller's objects.

Errors: a template that calls `raise_exception` or fails on this conversation raises
`TemplateError` (an `InvalidRequest`, HTTP 400, quoting the template's message); a template that
does not parse, tries something unsafe or runs away raises `TemplateRefused` (a `ModelRefused`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from inference.engine.base import ContextLengthExceeded, InvalidRequest, ModelRefused
from inference.engine.formats import read_json_object
from inference.engine.tool_prompt import messages_with_tools_described

MAX_TEMPLATE_CHARS = 1_000_000  # the largest real templates are some tens of kilobytes
MAX_RENDERED_CHARS = 8_000_000  # about two million tokens: more than any model's context
MAX_VALUE_CHARS = MAX_RENDERED_CHARS  # any string or collection a template builds on the way
MAX_INT_ARGUMENT = 100_000  # Jinja's own sandbox caps range() at the same number
MAX_LOOP_STEPS = 1_000_000  # for-loop iterations in one render, all loops together
MAX_POWER_BITS = 100_000  # size of the result of `a ** b`
MAX_TOJSON_INDENT = 64
RENDER_SECONDS = 10.0

TEMPLATE_SOURCES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json", "gguf", "none")


class TemplateError(InvalidRequest):
    """The chat template rejected this conversation (its `raise_exception`) or failed on it."""


class TemplateRefused(ModelRefused):
    """The chat template does not parse, tried something unsafe, or ran away: it is not rendered."""


# --- the budget of one render ---------------------------------------------------------------------


@dataclasses.dataclass
class _RenderBudget:
    deadline: float
    loop_steps_left: int

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateRefused(
                f"The chat template took longer than {RENDER_SECONDS:g} s to render; Hearth stopped it."
            )

    def spend_loop_step(self) -> None:
        self.loop_steps_left -= 1
        if self.loop_steps_left < 0:
            raise TemplateRefused(
                f"The chat template ran more than {MAX_LOOP_STEPS:,} loop iterations; Hearth stopped it."
            )
        self.check_time()


_current_budget: contextvars.ContextVar[_RenderBudget | None] = contextvars.ContextVar(
    "chat_template_budget", default=None
)


def _check_time() -> None:
    budget = _current_budget.get()
    if budget is not None:
        budget.check_time()


# --- size estimates, checked before an operation allocates --------------------------------------


def _approx_size(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """Characters of the strings in `value` plus one per other item, counting shared references again
    (so `[s] * 1000` costs a thousand `s`); stops counting past `limit`."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple):
            total += 1
            stack.extend(item)
        elif isinstance(item, Mapping):
            total += 1
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 1
    return total


def _refuse_if_too_big(estimate: int, what: str) -> None:
    if estimate > MAX_VALUE_CHARS:
        raise TemplateRefused(
            f"The chat template tried to build {what} of about {estimate:,} characters; "
            f"Hearth allows {MAX_VALUE_CHARS:,}."
        )


def _check_int_arguments(args: Iterable[Any], kwargs: Mapping[str, Any], callee: str) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARGUMENT:
            raise TemplateRefused(
                f"The chat template passed {value} to {callee}; "
                f"Hearth allows integer arguments up to {MAX_INT_ARGUMENT:,}."
            )


_DIGIT_RUN = re.compile(r"\d+")


def _format_estimate(fmt: str, args: Iterable[Any]) -> int:
    """Upper bound of `fmt.format(*args)` or `fmt % args`: the arguments plus every width in `fmt`."""
    widths = sum(int(run) for run in _DIGIT_RUN.findall(fmt) if len(run) <= 12) + sum(
        10**12 for run in _DIGIT_RUN.findall(fmt) if len(run) > 12
    )
    numbers = sum(abs(a) for a in args if isinstance(a, int) and not isinstance(a, bool))
    return len(fmt) + widths + numbers + sum(_approx_size(a) for a in args)


def _replace_estimate(text: str, old: str, new: str, count: int | None = None) -> int:
    occurrences = text.count(old)
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * max(0, len(new) - len(old))


def _bounded(items: Iterable[Any], what: str) -> Iterator[Any]:
    """Iterate `items`, refusing once the items together grow past MAX_VALUE_CHARS."""
    total = 0
    for item in items:
        total += _approx_size(item)
        _refuse_if_too_big(total, what)
        yield item


def _materialize(items: Iterable[Any], what: str) -> list[Any]:
    return list(_bounded(items, what))


# --- the hardened sandbox ------------------------------------------------------------------------


class _LoopGuardingCodeGenerator(CodeGenerator):
    """Compiles `{% for x in items %}` as `for x in environment.guard_loop(items)`."""

    def visit_For(self, node: nodes.For, frame: Any) -> None:
        self.__dict__.setdefault("_guarded_iterables", set()).add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self.__dict__.get("_guarded_iterables", ()):
            return super().visit(node, *args, **kwargs)
        self.write("environment.guard_loop(")
        result = super().visit(node, *args, **kwargs)
        self.write(")")
        return result


class _GenerationTagExtension(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here a no-op."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _BoundedNamespace(Namespace):
    """`namespace()` without underscore attributes (`ns._Namespace__attrs`) or runaway values
    (`{% set ns.s = ns.s ~ ns.s %}`)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: B902 (Namespace's trick: `self` may be a kwarg)
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name, value in attributes.items():
            _BoundedNamespace._check(name, value)
        Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _BoundedNamespace._check(name, value)
        super().__setitem__(name, value)

    @staticmethod
    def _check(name: Any, value: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            _ChatTemplateEnvironment._refuse(f"namespace attribute {name!r} starts with an underscore")
        _refuse_if_too_big(_approx_size(value), f"a value for namespace attribute {name!r}")


def _budgeted_range(*args: Any) -> range:
    _check_int_arguments(args, {}, "range()")
    return range(*args)


def _raise_exception(message: Any) -> None:
    raise TemplateError(f"The model's chat template rejected this conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """Like transformers' `tojson`: plain JSON, non-ASCII kept, no HTML escaping, indent supported."""
    if isinstance(indent, int) and indent > MAX_TOJSON_INDENT:
        raise TemplateRefused(
            f"The chat template asked tojson for indent {indent}; Hearth allows up to {MAX_TOJSON_INDENT}."
        )
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _estimate_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """Refuse `str` method calls whose result would be too big; returns the (maybe materialized) args."""
    target = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format / format_map
    text = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if not isinstance(text, str):
        return args, kwargs
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _refuse_if_too_big(_replace_estimate(text, args[0], args[1], count), "a string")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _refuse_if_too_big(len(text) + text.count("\t") * tabsize, "a string")
    elif name == "join" and args:
        parts = _materialize(args[0], "a joined string")
        _refuse_if_too_big(_approx_size(parts) + len(text) * len(parts), "a joined string")
        args = (parts, *args[1:])
    elif name == "format":
        _refuse_if_too_big(_format_estimate(text, (*args, *kwargs.values())), "a formatted string")
    elif name == "format_map" and args and isinstance(args[0], Mapping):
        _refuse_if_too_big(_format_estimate(text, tuple(args[0].values())), "a formatted string")
    return args, kwargs


def _filter_estimate(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Refuse filter calls whose result would be too big; returns the (maybe materialized) value."""
    if name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        prefix = len(width) if isinstance(width, str) else int(width) if isinstance(width, int) else 4
        _refuse_if_too_big(len(value) + (value.count("\n") + 1) * prefix, "an indented string")
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _refuse_if_too_big(_replace_estimate(str(value), str(args[0]), str(args[1]), count), "a string")
    elif name == "format" and isinstance(value, str):
        _refuse_if_too_big(_format_estimate(value, (*args, *kwargs.values())), "a formatted string")
    elif name == "wordwrap" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 79)
        wrapstring = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        lines = len(value) // max(int(width), 1) + value.count("\n") + 1 if isinstance(width, int) else 1
        _refuse_if_too_big(len(value) + lines * len(str(wrapstring)), "a wrapped string")
    elif name == "join" and not isinstance(value, str):
        value = _materialize(value, "a joined string")
        separator = args[0] if args else kwargs.get("d", "")
        _refuse_if_too_big(_approx_size(value) + len(str(separator)) * len(value), "a joined string")
    return value


def _guard_result(result: Any, what: str) -> Any:
    if isinstance(result, Iterator):
        return _bounded(result, what)
    _refuse_if_too_big(_approx_size(result), what)
    return result


def _guarded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    prefix = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0  # environment / context

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        head, value, rest = args[:prefix], args[prefix] if len(args) > prefix else None, args[prefix + 1 :]
        _check_int_arguments(rest, kwargs, f"the {name!r} filter")
        if isinstance(value, Iterator):
            value = _bounded(value, f"the input of the {name!r} filter")
        value = _filter_estimate(name, value, rest, kwargs)
        call_args = (*head, value, *rest) if len(args) > prefix else head
        return _guard_result(original(*call_args, **kwargs), f"the result of the {name!r} filter")

    return guarded


class _ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _LoopGuardingCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def guard_loop(self, iterable: Any) -> Iterator[Any]:
        budget = _current_budget.get()
        for item in iterable:
            if budget is not None:
                budget.spend_loop_step()
            yield item

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(attribute, str) and attribute.startswith("_"):
            self._refuse(f"access to attribute {attribute!r} is unsafe")
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        self._refuse(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_time()
        if not __self.is_safe_callable(__obj):
            __self._refuse(f"{__obj!r} is not safely callable")
        callee = getattr(__obj, "__name__", None) or type(__obj).__name__
        _check_int_arguments(args, kwargs, f"{callee}()")
        args, kwargs = _estimate_str_method(__obj, args, kwargs)
        return _guard_result(super().call(__context, __obj, *args, **kwargs), f"the result of {callee}()")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    size = _approx_size(sequence, limit=MAX_VALUE_CHARS // max(times, 1))
                    _refuse_if_too_big(size * max(times, 0), f"a repeated {type(sequence).__name__}")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int | float):
            if abs(right) * max(abs(left).bit_length(), 1) > MAX_POWER_BITS:
                self._refuse(f"{left} ** {right} is too large a number")
        elif operator == "%" and isinstance(left, str):
            values = (
                right
                if isinstance(right, tuple)
                else tuple(right.values())
                if isinstance(right, Mapping)
                else (right,)
            )
            _refuse_if_too_big(_format_estimate(left, values), "a formatted string")
        elif (
            operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple)
        ):
            _refuse_if_too_big(_approx_size(left) + _approx_size(right), "a concatenation")
        return super().call_binop(context, operator, left, right)

    @staticmethod
    def _refuse(reason: str) -> None:
        raise TemplateRefused(f"The chat template tried something unsafe and was not rendered: {reason}.")


def _build_environment() -> _ChatTemplateEnvironment:
    env = _ChatTemplateEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTagExtension]
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guarded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # no template needs lorem ipsum, and it can be made slow
    env.globals.update(
        range=_budgeted_range,
        namespace=_BoundedNamespace,
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
    )
    return env


_ENVIRONMENT = _build_environment()
_RESERVED_NAMES = frozenset(_ENVIRONMENT.globals)


@functools.lru_cache(maxsize=64)
def compile_chat_template(template: str) -> jinja2.Template:
    """Parse and compile once per distinct template text."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateRefused(
            f"The chat template is {len(template):,} characters long; Hearth accepts up to {MAX_TEMPLATE_CHARS:,}."
        )
    try:
        return _ENVIRONMENT.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRefused(f"The chat template does not parse (line {exc.lineno}): {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateRefused(f"The chat template does not compile: {exc}") from exc


@functools.lru_cache(maxsize=64)
def template_uses_tools(template: str) -> bool:
    """Whether the template reads the `tools` variable (Qwen, Llama 3.x, Mistral, ... templates do)."""
    compile_chat_template(template)  # refuses what does not parse, with its message
    return "tools" in jinja2.meta.find_undeclared_variables(_ENVIRONMENT.parse(template))


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """The prompt text for `messages`, rendered as transformers' `apply_chat_template(tokenize=False)`.

    `extra` becomes template variables too (`documents`, `enable_thinking`, `pad_token`, ...).
    """
    clashes = _RESERVED_NAMES.intersection(extra)
    if clashes:
        raise InvalidRequest(
            f"These names cannot be passed to a chat template: {', '.join(sorted(clashes))}."
        )
    compiled = compile_chat_template(template)
    variables = {
        **_plain_data(extra),
        "messages": _messages_for_template(messages),
        "tools": _plain_data(tools),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    budget = _RenderBudget(deadline=time.monotonic() + RENDER_SECONDS, loop_steps_left=MAX_LOOP_STEPS)
    token = _current_budget.set(budget)
    try:
        return _collect_output(compiled.generate(variables), budget)
    except (TemplateError, TemplateRefused, ContextLengthExceeded):
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateRefused(
            f"The chat template tried something unsafe and was not rendered: {exc}"
        ) from exc
    except (RecursionError, MemoryError) as exc:
        raise TemplateRefused(
            f"The chat template ran away ({type(exc).__name__}); Hearth stopped it."
        ) from exc
    except Exception as exc:  # the template's own bug or a message it did not expect
        raise TemplateError(f"The model's chat template failed on this conversation: {exc}") from exc
    finally:
        _current_budget.reset(token)


def render_chat_with_tools(
    template: str, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None, **options: Any
) -> str:
    """`render_chat` for a request that may carry tools, as every backend renders one: a template that reads the
    `tools` variable gets the tools and the conversation as they are; one that does not (where transformers would
    leave the tools out) gets them described in the system message, earlier calls and tool results as text
    (engine/tool_prompt.py)."""
    if tools and not template_uses_tools(template):
        messages, tools = messages_with_tools_described(messages, _plain_data(tools)), None
    return render_chat(template, messages, tools=tools, **options)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _messages_for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain-data copies of `messages`, as transformers prepares them: keys whose value is None dropped
    (templates test `is defined`, and would print "None"), and the reasoning offered under all the
    names templates read (`reasoning_content` for Qwen, `thinking` for gpt-oss); tool-call arguments as
    objects (`tool_call_arguments_as_objects`), whichever backend renders."""
    prepared = []
    for message in _plain_data(tool_call_arguments_as_objects(messages)):
        if not isinstance(message, dict):
            raise InvalidRequest(f"A chat message must be an object, not {type(message).__name__}.")
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_FIELDS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _plain_data(value: Any) -> Any:
    """`value` rebuilt from JSON types only, so a template never sees an object's methods.

    Subclasses of str/int/float become the base type, pydantic models and dataclasses become dicts,
    and anything else becomes an inert placeholder such as "<ndarray>".
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_data(key): _plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return (
            [_plain_data(item) for item in value]
            if isinstance(value, list)
            else tuple(map(_plain_data, value))
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _collect_output(chunks: Iterator[str], budget: _RenderBudget) -> str:
    parts: list[str] = []
    length = 0
    for chunk in chunks:
        length += len(chunk)
        if length > MAX_RENDERED_CHARS:
            raise ContextLengthExceeded(
                f"The rendered prompt is longer than {MAX_RENDERED_CHARS:,} characters, more than any model's context."
            )
        budget.check_time()
        parts.append(chunk)
    return "".join(parts)


# --- where a model keeps its template -------------------------------------------------------------


def find_chat_template(model_path: str, gguf_template: str | None = None) -> tuple[str | None, str]:
    """(template, source) from the model's own files, in the order transformers prefers them.

    For a model directory: `chat_template.jinja`, then `chat_template.json` (processors of
    multimodal models), then `tokenizer_config.json`'s `chat_template`; then the GGUF metadata
    string (`tokenizer.chat_template`) the caller read. Returns (None, "none") when there is none.
    The one reader of these files: every template is checked (UTF-8, at most `MAX_TEMPLATE_CHARS`),
    and TemplateRefused says which file is at fault.
    """
    if os.path.isdir(model_path):
        jinja_path = os.path.join(model_path, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            template = _read_template_file(jinja_path, "chat_template.jinja")
            if template.strip():
                return template, "chat_template.jinja"
        for filename in ("chat_template.json", "tokenizer_config.json"):
            config = _read_json_object(os.path.join(model_path, filename))
            template = _template_from_config(config, filename) if config is not None else None
            if template:
                return template, filename
    if gguf_template and gguf_template.strip():
        return _checked_template(gguf_template, "The GGUF's tokenizer.chat_template"), "gguf"
    return None, "none"


def read_special_tokens(model_path: str) -> dict[str, str]:
    """`bos_token`, `eos_token` and the like from a model directory's `tokenizer_config.json`."""
    if not os.path.isdir(model_path):
        return {}
    config = _read_json_object(os.path.join(model_path, "tokenizer_config.json")) or {}
    tokens = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(name)
        if isinstance(value, Mapping):  # a serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _read_template_file(path: str, label: str) -> str:
    if os.path.getsize(path) > 4 * MAX_TEMPLATE_CHARS:
        raise TemplateRefused(f"{label} is too large to be a chat template.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise TemplateRefused(f"{label} is not UTF-8 text.") from exc
    return _checked_template(text, label)


def _read_json_object(path: str) -> dict[str, Any] | None:
    """`formats.read_json_object` (its size limit and checks), refusing as a template problem."""
    try:
        return read_json_object(Path(path), "The model's")
    except ModelRefused as refusal:
        raise TemplateRefused(refusal.message) from None


def _template_from_config(config: dict[str, Any], label: str) -> str | None:
    """A config's `chat_template`: a string, or a list of named templates of which we take "default"."""
    value = config.get("chat_template")
    if value is None or value == "":
        return None
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value if isinstance(entry, Mapping)}
        value = named.get("default")
        if value is None:
            return None
    if not isinstance(value, str):
        raise TemplateRefused(f"{label}'s chat_template is neither a string nor a list of named templates.")
    return _checked_template(value, f"{label}'s chat_template") or None


def _checked_template(text: str, label: str) -> str:
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateRefused(
            f"{label} is {len(text):,} characters long; Hearth accepts up to {MAX_TEMPLATE_CHARS:,}."
        )
    return text


# --- conventional templates for models that ship none ---------------------------------------------

# `content` may be a string or OpenAI-style parts ([{"type": "text", "text": ...}, ...]).
_TEXT_OF = """\
{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable -%}{% for part in content if part.type == 'text' %}{{ part.text }}{% endfor %}
{%- endif -%}
{%- endmacro -%}
"""

# Gemma has no system role: the system prompt opens the first user turn, separated by a blank line.
GEMMA_TEMPLATE = (
    _TEXT_OF
    + """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = text_of(messages[0].content) | trim -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{{- '<start_of_turn>' ~ ('model' if message.role == 'assistant' else 'user') ~ '\\n' -}}
{%- if loop.first and ns.system -%}{{ ns.system ~ '\\n\\n' }}{%- endif -%}
{{- text_of(message.content) | trim ~ '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}
"""
)

LLAMA3_TEMPLATE = (
    _TEXT_OF
    + """\
{{- bos_token -}}
{%- for message in messages -%}
{{- '<|start_header_id|>' ~ message.role ~ '<|end_header_id|>\\n\\n' ~ text_of(message.content) | trim ~ '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}
"""
)

# Llama 2: the system prompt sits in <<SYS>> inside the first [INST]; every exchange is <s>...</s>.
LLAMA2_TEMPLATE = (
    _TEXT_OF
    + """\
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = '<<SYS>>\\n' ~ text_of(messages[0].content) | trim ~ '\\n<</SYS>>\\n\\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if message.role == 'assistant' -%}
{{- ' ' ~ text_of(message.content) | trim ~ ' ' ~ eos_token -}}
{%- else -%}
{{- bos_token ~ '[INST] ' ~ (ns.system if loop.first else '') ~ text_of(message.content) | trim ~ ' [/INST]' -}}
{%- endif -%}
{%- endfor -%}
"""
)

# Mistral: no system role either; the system prompt opens the first user message.
MISTRAL_TEMPLATE = (
    _TEXT_OF
    + """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = text_of(messages[0].content) | trim ~ '\\n\\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if message.role == 'assistant' -%}
{{- text_of(message.content) | trim ~ eos_token -}}
{%- else -%}
{{- '[INST] ' ~ (ns.system if loop.first else '') ~ text_of(message.content) | trim ~ ' [/INST]' -}}
{%- endif -%}
{%- endfor -%}
"""
)

PHI3_TEMPLATE = (
    _TEXT_OF
    + """\
{{- bos_token -}}
{%- for message in messages -%}
{{- '<|' ~ message.role ~ '|>\\n' ~ text_of(message.content) ~ '<|end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}
"""
)

CHATML_TEMPLATE = (
    _TEXT_OF
    + """\
{%- for message in messages -%}
{{- '<|im_start|>' ~ message.role ~ '\\n' ~ text_of(message.content) ~ '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}
"""
)


def conventional_template(architecture: str, special_tokens: set[str] | None = None) -> tuple[str, str]:
    """(template, note) for a model that ships no chat template, chosen by its architecture.

    `special_tokens` (the vocabulary's special tokens) tells Llama 3 from Llama 2; unknown means Llama 3.
    """
    arch = architecture.lower()
    if arch.startswith("gemma"):
        template, name = GEMMA_TEMPLATE, "Gemma"
    elif arch.startswith("llama"):
        if special_tokens is None or "<|start_header_id|>" in special_tokens:
            template, name = LLAMA3_TEMPLATE, "Llama 3"
        else:
            template, name = LLAMA2_TEMPLATE, "Llama 2 [INST]"
    elif arch.startswith(("mistral", "mixtral")):
        template, name = MISTRAL_TEMPLATE, "Mistral [INST]"
    elif arch.startswith("phi3"):
        template, name = PHI3_TEMPLATE, "Phi-3"
    elif arch.startswith("qwen"):
        template, name = CHATML_TEMPLATE, "ChatML (Qwen)"
    else:
        label = f"architecture {architecture!r}" if architecture else "an unknown architecture"
        return CHATML_TEMPLATE, (
            f"This model ships no chat template and Hearth knows no convention for {label}; "
            "Hearth uses ChatML, the most common format."
        )
    return template, f"This model ships no chat template; Hearth uses the conventional {name} format."


# --- one object for a backend ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """The template a loaded model renders with, where it came from, and its special tokens.

    `source` is "override" (ModelSpec.chat_template), one of `TEMPLATE_SOURCES` but "none", or
    "conventional" (then `note` says which convention and why).
    """

    template: str
    source: str
    note: str = ""
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def for_model(
        cls,
        model_path: str,
        *,
        architecture: str = "",
        gguf_template: str | None = None,
        override: str | None = None,
        special_tokens: set[str] | None = None,
        bos_token: str = "",
        eos_token: str = "",
    ) -> ChatTemplate:
        tokens = {"bos_token": bos_token, "eos_token": eos_token}
        if not (bos_token or eos_token):
            tokens.update({k: v for k, v in read_special_tokens(model_path).items() if k in tokens})
        if override:
            return cls(override, "override", "The chat template was set by hand.", **tokens)
        template, source = find_chat_template(model_path, gguf_template)
        if template is not None:
            return cls(template, source, **tokens)
        template, note = conventional_template(architecture, special_tokens)
        return cls(template, "conventional", note, **tokens)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """As `render_chat_with_tools`: tools described in the system message when the template has no `tools`."""
        return render_chat_with_tools(
            self.template,
            messages,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **extra,
        )


def tool_call_arguments_as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of OpenAI-shaped `messages` whose tool-call `arguments` are objects, not JSON strings.

    The OpenAI API carries `function.arguments` as a JSON string; model templates (Qwen, Llama 3.1,
    ...) expect a mapping and `tojson` it themselves. Strings that are not a JSON object stay as they are.
    """
    converted = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        if not isinstance(calls, list):
            converted.append(message)
            continue
        new_calls = []
        for call in calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            arguments = function.get("arguments") if isinstance(function, Mapping) else None
            if isinstance(arguments, str):
                try:
                    parsed = json.loads(arguments)
                except json.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    call = {**call, "function": {**function, "arguments": parsed}}
            new_calls.append(call)
        converted.append({**message, "tool_calls": new_calls})
    return converted
