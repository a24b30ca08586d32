"""Single sign-on with an OpenID Connect provider, and the switch for password sign-in.

mozilla-django-oidc runs the authorization code flow (state, nonce, PKCE, the token exchange, userinfo); Hearth adds
what it lacks or does differently:
- the provider's endpoints from its discovery document (<issuer>/.well-known/openid-configuration), fetched with a
  timeout and cached per process, its signing keys from its JWKS (cached, fetched again for an unknown key id);
- an ID token checked for its issuer and audience as well as its signature, expiry and nonce;
- who may come in: a verified email (the identity an account is matched by), in an allowed domain;
- the account: found by email (so a local account moves to SSO), else created with the preferred_username; on every
  sign-in its Django groups become those of the groups claim (created when missing, all others removed, those an
  admin gave in Hearth too: the provider is the one place to manage them) and, when admin groups are set, is_staff
  follows membership of one of them (a superuser is never demoted);
- readable pages instead of errors: a refusal (403), a provider that cannot be reached (503), a sign-in that cannot
  be checked (400);
- logout that ends the Hearth session and then, when the provider has an end_session_endpoint, the provider's.

With HEARTH_LOCAL_LOGIN off, the login page shows only the SSO button and refuses passwords; superusers keep one
password door, the Django admin's /admin/login/ (the break-glass account of `manage.py createsuperuser` or
`bootstrap_admin`), so a provider outage never locks the admins out.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import jwt
import requests
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404
from django.shortcuts import render, resolve_url
from django.urls import reverse
from django.views import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from inference.access import user_groups_set
from inference.audit import audit_record

log = logging.getLogger(__name__)

DISCOVERY_SECONDS = 3600
JWKS_SECONDS = 3600
# Asymmetric algorithms only: an ID token signed with the client secret (HS256) or unsigned ("none") is refused.
SIGNING_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
CLOCK_LEEWAY_SECONDS = 60


def sso_enabled() -> bool:
    return bool(settings.HEARTH_OIDC_ISSUER)


def library_setting(name: str, *default):
    """mozilla-django-oidc's settings, derived from Hearth's (its views and backend read them through this)."""
    values = {
        "OIDC_RP_CLIENT_ID": settings.HEARTH_OIDC_CLIENT_ID,
        "OIDC_RP_CLIENT_SECRET": settings.HEARTH_OIDC_CLIENT_SECRET,
        "OIDC_RP_SCOPES": settings.HEARTH_OIDC_SCOPES,
        "OIDC_TIMEOUT": settings.HEARTH_OIDC_TIMEOUT,
        "OIDC_USE_PKCE": True,
        "OIDC_USE_NONCE": True,
        "OIDC_STORE_ID_TOKEN": True,  # the id_token_hint of the provider's logout
        "OIDC_AUTHENTICATION_CALLBACK_URL": "webui:sso_callback",
        "OIDC_CREATE_USER": True,
        "LOGIN_REDIRECT_URL": settings.LOGIN_REDIRECT_URL,
    }
    if name in values:
        return values[name]
    if default:
        return getattr(settings, name, default[0])
    return getattr(settings, name)


# ---------------------------------------------------------------------------------------------------------
# The provider: discovery and keys


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered with something that is not a usable OIDC provider."""


class SignInRefused(Exception):
    """The provider vouched for someone Hearth does not let in; the message says why, to them."""


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""


_cache_lock = threading.Lock()
_discovered: dict[str, tuple[float, Provider]] = {}
_jwks: dict[str, tuple[float, list[dict]]] = {}


def _get_json(url: str) -> dict:
    try:
        response = requests.get(url, timeout=settings.HEARTH_OIDC_TIMEOUT, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except requests.RequestException as error:
        raise ProviderUnavailable(f"{url} could not be read: {error}") from error
    except ValueError as error:
        raise ProviderUnavailable(f"{url} did not answer with JSON.") from error
    if not isinstance(document, dict):
        raise ProviderUnavailable(f"{url} did not answer with a JSON object.")
    return document


def discover() -> Provider:
    """The configured provider's endpoints, from its discovery document (cached for an hour; when it cannot be read
    again, the last good copy is kept)."""
    issuer = settings.HEARTH_OIDC_ISSUER
    with _cache_lock:
        cached = _discovered.get(issuer)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    try:
        document = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    except ProviderUnavailable:
        if cached:
            return cached[1]
        raise
    if str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise ProviderUnavailable(f"The provider names itself {document.get('issuer')!r}, not HEARTH_OIDC_ISSUER "
                                  f"{issuer!r}.")
    missing = [key for key in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(key)]
    if missing:
        raise ProviderUnavailable(f"The provider's discovery document lacks {', '.join(missing)}.")
    provider = Provider(
        issuer=document["issuer"], authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"], jwks_uri=document["jwks_uri"],
        userinfo_endpoint=document.get("userinfo_endpoint") or "",
        end_session_endpoint=document.get("end_session_endpoint") or "")
    with _cache_lock:
        _discovered[issuer] = (time.monotonic() + DISCOVERY_SECONDS, provider)
    return provider


def signing_key(provider: Provider, kid: str | None, algorithm: str):
    """The provider's public key for a token's key id (its JWKS cached; read again once for a key id it lacks, as
    after a key rotation)."""
    for fresh in (False, True):
        with _cache_lock:
            cached = _jwks.get(provider.jwks_uri)
        if fresh or not cached or cached[0] <= time.monotonic():
            keys = _get_json(provider.jwks_uri).get("keys")
            if not isinstance(keys, list):
                raise ProviderUnavailable(f"{provider.jwks_uri} holds no key list.")
            cached = (time.monotonic() + JWKS_SECONDS, keys)
            with _cache_lock:
                _jwks[provider.jwks_uri] = cached
            fresh = True
        for key in cached[1]:
            if not isinstance(key, dict) or key.get("use", "sig") != "sig":
                continue
            if (kid is None or key.get("kid") == kid) and key.get("alg", algorithm) == algorithm:
                try:
                    return jwt.PyJWK(key, algorithm=algorithm).key
                except jwt.PyJWTError as error:
                    raise SuspiciousOperation(f"The provider's key {kid!r} is unusable: {error}") from error
        if fresh:
            break
    raise SuspiciousOperation(f"The provider has no key {kid!r} for {algorithm}.")


# ---------------------------------------------------------------------------------------------------------
# Who comes in, and as whom


def claim(claims: dict, name: str):
    """A claim by its name, or by a dotted path into nested objects (realm_access.roles) when no claim has the name."""
    if name in claims:
        return claims[name]
    value = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def group_names(claims: dict) -> list[str]:
    """The groups claim as group names: a list of strings or one string; anything else in it is ignored."""
    value = claim(claims, settings.HEARTH_OIDC_GROUPS_CLAIM)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    names = {item.strip() for item in value if isinstance(item, str) and 0 < len(item.strip()) <= 150}
    return sorted(names)


def email_verified(claims: dict) -> bool:
    verified = claims.get("email_verified")
    return verified is True or str(verified).lower() == "true" or settings.HEARTH_OIDC_TRUST_EMAIL


def check_claims(claims: dict) -> str:
    """The email the claims vouch for, or SignInRefused saying why they do not let their holder in."""
    provider = settings.HEARTH_OIDC_PROVIDER_NAME
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SignInRefused(f"{provider} gave Hearth no email address for your account, and Hearth needs one to know "
                            "who you are. Ask your administrator to release the email claim to Hearth.")
    if not email_verified(claims):
        raise SignInRefused(f"{provider} did not confirm that {email} is verified, so Hearth cannot take it as yours.")
    domain = email.rsplit("@", 1)[1].lower()
    allowed = settings.HEARTH_OIDC_ALLOWED_DOMAINS
    if allowed and domain not in allowed:
        raise SignInRefused(f"This Hearth is open to accounts of {', '.join(allowed)} only; you signed in to "
                            f"{provider} as {email}. Sign out there and use your work account, or ask an "
                            "administrator to let your domain in.")
    return email


def username_for(claims: dict, email: str) -> str:
    """preferred_username, else the email, as a valid Django username not yet taken (a number added if it is)."""
    wanted = claims.get("preferred_username")
    if not isinstance(wanted, str) or not wanted.strip():
        wanted = email
    base = re.sub(r"[^\w.@+-]", "-", wanted.strip())[:140] or "user"
    users = get_user_model().objects
    candidate, number = base, 1
    while users.filter(username__iexact=candidate).exists():
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def follow_claims(user, claims: dict) -> None:
    """The user's groups become the claim's (missing groups created; an absent claim is no groups), unless no groups
    claim is set; admins (is_staff) follow the admin groups, when they are set."""
    if not settings.HEARTH_OIDC_GROUPS_CLAIM:
        return
    names = group_names(claims)
    user_groups_set(None, user, [Group.objects.get_or_create(name=name)[0] for name in names])  # audited
    admin_groups = set(settings.HEARTH_OIDC_ADMIN_GROUPS)
    if admin_groups:
        is_admin = bool(admin_groups.intersection(names)) or user.is_superuser
        if user.is_staff != is_admin:
            user.is_staff = is_admin
            user.save(update_fields=["is_staff"])
            audit_record(None, "user.role", user.get_username(), role="admin" if is_admin else "member",
                         was="member" if is_admin else "admin", by="single sign-on")


def issuers(issuer: str) -> list[str]:
    """The `iss` values an ID token of this issuer may carry: its own, and Google's bare host name, which Google
    documents as an equal alternative."""
    return [issuer, "accounts.google.com"] if issuer == "https://accounts.google.com" else [issuer]


class OIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with discovered endpoints and Hearth's rules (see the module's docstring)."""

    get_settings = staticmethod(library_setting)

    def __init__(self, *args, **kwargs):
        # The library reads fixed endpoints here; Hearth discovers them when a sign-in comes back (authenticate), so
        # building the backend (on every request of an SSO session) never touches the network.
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.HEARTH_OIDC_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.HEARTH_OIDC_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = "RS256"
        self.OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request, **kwargs):
        if request is None or "nonce" not in kwargs:  # a password sign-in: not this backend's
            return None
        self.provider = discover()
        self.OIDC_OP_TOKEN_ENDPOINT = self.provider.token_endpoint
        self.OIDC_OP_USER_ENDPOINT = self.provider.userinfo_endpoint
        self.OIDC_OP_JWKS_ENDPOINT = self.provider.jwks_uri
        return super().authenticate(request, **kwargs)

    def verify_token(self, token, **kwargs):
        """The ID token's signature (a key of the provider's JWKS), issuer, audience, expiry and nonce."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise SuspiciousOperation(f"The ID token is malformed: {error}") from error
        algorithm = header.get("alg")
        if algorithm not in SIGNING_ALGORITHMS:
            raise SuspiciousOperation(f"The ID token is signed with {algorithm!r}; Hearth takes public-key signatures.")
        key = signing_key(self.provider, header.get("kid"), algorithm)
        try:
            payload = jwt.decode(token, key, algorithms=[algorithm], audience=self.OIDC_RP_CLIENT_ID,
                                 issuer=issuers(self.provider.issuer), leeway=CLOCK_LEEWAY_SECONDS,
                                 options={"require": ["iss", "aud", "exp", "sub"]})
        except jwt.PyJWTError as error:
            raise SuspiciousOperation(f"The ID token was refused: {error}") from error
        if "nonce" in kwargs and payload.get("nonce") != kwargs["nonce"]:
            raise SuspiciousOperation("The ID token's nonce is not this sign-in's.")
        return payload

    def get_userinfo(self, access_token, id_token, payload):
        """The ID token's claims with the userinfo endpoint's over them (Entra ID puts groups in the token only;
        Keycloak and others may put them in userinfo only)."""
        claims = dict(payload)
        if self.provider.userinfo_endpoint and access_token:
            info = super().get_userinfo(access_token, id_token, payload)
            if isinstance(info, dict):
                if info.get("sub", payload.get("sub")) != payload.get("sub"):
                    raise SuspiciousOperation("The userinfo endpoint answered for another subject.")
                claims.update(info)
        return claims

    def verify_claims(self, claims):
        check_claims(claims)
        return True

    def filter_users_by_claims(self, claims):
        return self.UserModel.objects.filter(email__iexact=check_claims(claims))

    def get_or_create_user(self, access_token, id_token, payload):
        with transaction.atomic():
            try:
                return super().get_or_create_user(access_token, id_token, payload)
            except SuspiciousOperation as error:
                if "Multiple users" in str(error):
                    raise SignInRefused("More than one Hearth account has your email address, so Hearth cannot tell "
                                        "which is yours. Ask an administrator to give one of them another.") from None
                raise

    def create_user(self, claims):
        email = check_claims(claims)
        user = self.UserModel.objects.create_user(username_for(claims, email), email=email)
        audit_record(None, "user.create", user.get_username(), role="member", by="single sign-on")
        follow_claims(user, claims)
        log.info("single sign-on created the user %s", user.username)
        return user

    def update_user(self, user, claims):
        follow_claims(user, claims)
        return user


class PasswordBackend(ModelBackend):
    """Django's password sign-in, refused when HEARTH_LOCAL_LOGIN is off, except for superusers on the admin's own
    login page: the break-glass door for when the provider is down or misconfigured."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None or settings.HEARTH_LOCAL_LOGIN:
            return user
        if user.is_superuser and request is not None and request.path == reverse("admin:login"):
            return user
        return None


# ---------------------------------------------------------------------------------------------------------
# Pages


def problem(request, status: int, heading: str, message: str):
    return render(request, "webui/sso_problem.html", {
        "status": status, "heading": heading, "message": message, "local_login": settings.HEARTH_LOCAL_LOGIN,
    }, status=status)


def unavailable(request, error: Exception):
    log.warning("single sign-on: the provider is unavailable: %s", error)
    name = settings.HEARTH_OIDC_PROVIDER_NAME
    return problem(request, 503, f"{name} cannot be reached",
                   f"Hearth could not reach {name} to sign you in. Try again in a few minutes; if it goes on, tell "
                   "your administrator.")


class LoginView(auth_views.LoginView):
    """The login page: "Sign in with <provider>" when SSO is set up, the password form unless local login is off."""

    template_name = "webui/login.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["local_login"] = settings.HEARTH_LOCAL_LOGIN
        if sso_enabled():
            next_url = context.get("next") or ""
            context["sso_url"] = reverse("webui:sso_login") + (f"?{urlencode({'next': next_url})}" if next_url else "")
            context["sso_name"] = settings.HEARTH_OIDC_PROVIDER_NAME
        return context

    def post(self, request, *args, **kwargs):
        if not settings.HEARTH_LOCAL_LOGIN:
            return problem(request, 403, "Password sign-in is switched off",
                           f"This Hearth signs people in through {settings.HEARTH_OIDC_PROVIDER_NAME} only.")
        return super().post(request, *args, **kwargs)


class LogoutView(auth_views.LogoutView):
    """Ends the Hearth session; a session that came from the provider then goes to its end_session_endpoint, which
    comes back to the login page. It goes there from a page (a refresh and a link), not by a redirect: the logout
    form's page allows forms to post to Hearth only (CSP form-action 'self'), and browsers hold a form's redirects
    to that too."""

    def post(self, request, *args, **kwargs):
        from_provider = request.session.get(BACKEND_SESSION_KEY) == f"{__name__}.{OIDCBackend.__name__}"
        id_token = request.session.get("oidc_id_token") if from_provider else None
        response = super().post(request, *args, **kwargs)
        if id_token and sso_enabled():
            try:
                endpoint = discover().end_session_endpoint
            except ProviderUnavailable as error:
                log.warning("single sign-on: logged out of Hearth only, the provider is unavailable: %s", error)
                endpoint = ""
            if endpoint:
                query = urlencode({"id_token_hint": id_token, "client_id": settings.HEARTH_OIDC_CLIENT_ID,
                                   "post_logout_redirect_uri": request.build_absolute_uri(
                                       resolve_url(settings.LOGOUT_REDIRECT_URL))})
                return render(request, "webui/sso_logout.html", {
                    "url": f"{endpoint}{'&' if '?' in endpoint else '?'}{query}",
                    "name": settings.HEARTH_OIDC_PROVIDER_NAME})
        return response


class SignInView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider (state, nonce and PKCE kept in the session)."""

    get_settings = staticmethod(library_setting)

    def __init__(self, **kwargs):
        View.__init__(self, **kwargs)  # the library's reads a fixed endpoint; it is discovered per request here

    def get(self, request):
        if not sso_enabled():
            raise Http404("Single sign-on is not set up.")
        try:
            provider = discover()
        except ProviderUnavailable as error:
            return unavailable(request, error)
        self.OIDC_OP_AUTH_ENDPOINT = provider.authorization_endpoint
        self.OIDC_RP_CLIENT_ID = settings.HEARTH_OIDC_CLIENT_ID
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back: signs the user in, or says in words why not."""

    get_settings = staticmethod(library_setting)

    def get(self, request):
        if not sso_enabled():
            raise Http404("Single sign-on is not set up.")
        try:
            return super().get(request)
        except SignInRefused as refusal:
            log.info("single sign-on refused: %s", refusal)
            request.session.pop("oidc_id_token", None)  # kept by the library before the refusal
            return problem(request, 403, "You cannot sign in to this Hearth", str(refusal))
        except (ProviderUnavailable, requests.RequestException) as error:
            return unavailable(request, error)
        except SuspiciousOperation as error:
            log.warning("single sign-on: a sign-in could not be checked: %s", error)
            return problem(request, 400, "This sign-in could not be checked",
                           "The answer from the provider did not match a sign-in started here (an old or reused "
                           "link, or another tab). Start again from the login page.")

    def login_failure(self):
        name = settings.HEARTH_OIDC_PROVIDER_NAME
        error = self.request.GET.get("error")
        if error:
            detail = self.request.GET.get("error_description") or error
            return problem(self.request, 403, f"{name} did not sign you in", f"{name} answered: {detail}")
        user = getattr(self, "user", None)
        if user is not None and not user.is_active:
            return problem(self.request, 403, "Your Hearth account is switched off",
                           "An administrator has deactivated your account.")
        return problem(self.request, 400, "This sign-in could not be checked",
                       "The answer from the provider did not match a sign-in started here. Start again from the "
                       "login page.")
