"""From a request to the token ids a sequence starts with: the chat template, fitting the history, the budget.

Done once for every backend (through the BatchModel's `render_prompt` and `tokenize`): a chat page's request
leaves out its oldest turns until the prompt fits with room for a reply (`fit_history`); an API request that does
not fit is refused with OpenAI's words for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from inference.engine.base import (
    ContextLengthExceeded,
    GenerationRequest,
    InvalidRequest,
    fit_history,
    reply_reserve,
)
from inference.engine.batch import BatchModel


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_new_tokens: int  # the request's max_tokens within what the context leaves
    dropped_messages: int = 0  # the oldest turns left out to fit


def prepare_prompt(model: BatchModel, request: GenerationRequest) -> Prompt:
    if (request.prompt is None) == (request.messages is None):
        raise InvalidRequest("Give exactly one of messages or prompt.")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, not {request.max_tokens}.")
    dropped = 0
    if request.fit_history and request.messages:
        room = model.n_ctx - reply_reserve(model.n_ctx)
        messages, dropped = fit_history(
            request.messages, lambda kept: len(_tokens(model, replace(request, messages=kept))) <= room)
        request = replace(request, messages=messages)
    ids = _tokens(model, request)
    if len(ids) >= model.n_ctx:
        what = "messages" if request.messages is not None else "prompt"
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.n_ctx} tokens. However, your {what} resulted in "
            f"{len(ids)} tokens. Please reduce the length of the {what}.")
    room = model.n_ctx - len(ids)
    budget = room if request.max_tokens is None else min(request.max_tokens, room)
    return Prompt(ids=ids, max_new_tokens=budget, dropped_messages=dropped)


def _tokens(model: BatchModel, request: GenerationRequest) -> list[int]:
    return model.tokenize(model.render_prompt(request))
