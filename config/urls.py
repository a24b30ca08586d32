from django.contrib import admin
from django.urls import include, path, re_path

from api.api import api
from api.errors import unknown_api_path
from api.routers.ollama import unknown_path as unknown_ollama_path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("webui.urls")),
    path("", include("api.web_urls")),  # before the API: ninja answers its own root with a 404
    path("", api.urls),
    re_path(r"^v1(/.*)?$", unknown_api_path),  # OpenAI's JSON 404, never the site's HTML page
    re_path(r"^api(/.*)?$", unknown_ollama_path),  # Ollama's (after the API: /api/docs and its schema stay)
]
