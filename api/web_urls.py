"""Browser pages of the api app (the API keys page)."""

from django.urls import path

from api import web

app_name = "api_web"

urlpatterns = [
    path("keys/", web.keys, name="keys"),
    path("keys/new/", web.key_create, name="key_create"),
    path("keys/<int:key_id>/revoke/", web.key_revoke, name="key_revoke"),
]
