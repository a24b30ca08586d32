"""The provider's users and clients, read from JSON files in its data directory on every use.

users.json: {"alice": {"password": "...", "email": "...", "email_verified": true, "groups": ["..."]}}
clients.json: {"hearth": {"secret": "...", "redirect_uris": ["..."], "post_logout_redirect_uris": ["..."]}}
"""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import BaseBackend
from oauth2_provider.models import get_application_model
from oauth2_provider.oauth2_validators import OAuth2Validator


def read(name: str) -> dict:
    path = settings.DATA_DIR / name
    return json.loads(path.read_text()) if path.exists() else {}


class UsersFromFile(BaseBackend):
    """Signs in the users of users.json (a Django user row is kept for each: the grants point at it)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        record = read("users.json").get(username or "")
        if record is None or record.get("password") != password:
            return None
        user, _ = get_user_model().objects.get_or_create(username=username)
        return user

    def get_user(self, user_id):
        return get_user_model().objects.filter(pk=user_id).first()


class ClaimsValidator(OAuth2Validator):
    """The claims of users.json: preferred_username, email, email_verified and groups (with the profile scope)."""

    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "profile"}

    def get_additional_claims(self, request):
        record = read("users.json").get(request.user.username, {})
        claims = {"preferred_username": request.user.username, "email": record.get("email"),
                  "email_verified": record.get("email_verified", True), "groups": record.get("groups")}
        return {name: value for name, value in claims.items() if value is not None}


class ClientsFromFile:
    """Middleware: makes the applications of clients.json exist as confidential RS256 clients before each request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        applications = get_application_model()
        for client_id, client in read("clients.json").items():
            application = applications.objects.filter(client_id=client_id).first() or applications(client_id=client_id)
            if not application.pk or application.redirect_uris != " ".join(client["redirect_uris"]):
                application.name = client_id
                application.client_secret = client["secret"]
                application.client_type = applications.CLIENT_CONFIDENTIAL
                application.authorization_grant_type = applications.GRANT_AUTHORIZATION_CODE
                application.algorithm = applications.RS256_ALGORITHM
                application.skip_authorization = True
                application.redirect_uris = " ".join(client["redirect_uris"])
                application.post_logout_redirect_uris = " ".join(client.get("post_logout_redirect_uris", []))
                application.save()
        return self.get_response(request)
