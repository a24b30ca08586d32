from django.contrib import admin
from django.urls import include, path

from api.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("webui.urls")),
    path("", include("api.web_urls")),  # before the API: ninja answers its own root with a 404
    path("", api.urls),
]
