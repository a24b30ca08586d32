"""Tools in the prompt for a chat template that does not read `tools`: described in the system message.

A model's own template that reads the `tools` variable (Qwen, Llama 3.x, Mistral, ...) gets the tools and the
conversation as they are (`chat_template.render_chat` decides). For the others the tools are described the way
Hermes-style templates teach them (Qwen, Hermes, many fine-tunes), earlier calls are written as `<tool_call>`
blocks and tool results as `<tool_response>` user turns, which every template can render. The calls come back in
the same format (api/tools.py reads them; inference/engine/grammar.py forces them).
"""

from __future__ import annotations

import json
from typing import Any

HERMES_OPEN, HERMES_CLOSE = "<tool_call>\n", "\n</tool_call>"


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """The tools, described as Hermes-style templates do."""
    functions = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You may call one or more functions to assist with the user query. The functions are listed in "
        f"<tools></tools>:\n<tools>\n{functions}\n</tools>\n\nFor each function call, return a JSON object with "
        "the function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def _arguments(function: dict[str, Any]) -> Any:
    """A call's arguments as the model wrote them: the object of OpenAI's JSON-string `arguments`."""
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _call_block(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    body = json.dumps({"name": function.get("name"), "arguments": _arguments(function)}, ensure_ascii=False)
    return f"{HERMES_OPEN}{body}{HERMES_CLOSE}"


def messages_with_tools_described(messages: list[dict[str, Any]], tools: list[dict[str, Any]]
                                  ) -> list[dict[str, Any]]:
    """The conversation for a template without `tools`: the tools described in the system message (added when
    there is none), assistant calls as `<tool_call>` blocks, tool results as `<tool_response>` user turns."""
    converted = []
    for message in messages:
        if not isinstance(message, dict):  # refused by the renderer, with its message
            converted.append(message)
        elif message.get("role") == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call) for call in message["tool_calls"]]
            text = "\n".join(filter(None, [message.get("content") or "", *blocks]))
            converted.append({"role": "assistant", "content": text})
        elif message.get("role") == "tool":
            converted.append({"role": "user",
                              "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        else:
            converted.append(message)
    described = tools_system_prompt(tools)
    if converted and isinstance(converted[0], dict) and converted[0].get("role") == "system":
        converted[0] = {**converted[0], "content": f"{converted[0].get('content') or ''}\n\n{described}"}
    else:
        converted.insert(0, {"role": "system", "content": described})
    return converted
