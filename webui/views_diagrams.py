"""The sandboxed frame that draws Mermaid diagrams for the chat (static/hearth/rich.js posts it a diagram's source
and gets the SVG back). The page embeds it with `sandbox="allow-scripts"`: it runs in an opaque origin, with no
cookies, no access to the page and no network beyond this site's static files, so a diagram that exploited Mermaid
would find nothing there to take. Its own policy allows inline styles (Mermaid styles its SVG) but still no inline
script; only Hearth's own pages may frame it."""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET

FRAME_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'self'",
])


@require_GET
@xframe_options_sameorigin
def diagram_frame(request):
    response = render(request, "webui/diagram_frame.html")
    response["Content-Security-Policy"] = FRAME_POLICY
    return response
