"""Pages when Redis or the database is briefly gone: a readable 503 with Retry-After, never a 500."""

from __future__ import annotations

import logging

from django.shortcuts import render

from inference.outages import RETRY_AFTER_SECONDS, outage_message, outage_seen

log = logging.getLogger(__name__)


class OutageMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        service = outage_seen(exception)
        if service is None:
            return None
        log.warning("%s unreachable on %s: %s", service, request.path, exception)
        response = render(request, "503.html", {"message": outage_message(service)}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
