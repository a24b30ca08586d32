"""The API's request parser: JSON bodies parsed strictly and their text checked (config.text), once for every
operation. A refusal reaches `api.api` as ninja's HttpError(400) caused by InvalidJson or InvalidText."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.parser import Parser

from config import text


class StrictJsonParser(Parser):
    def parse_body(self, request: HttpRequest):
        return text.loads(request.body)
