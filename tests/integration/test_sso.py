"""Single sign-on against a real OpenID Connect provider: tests/oidc_provider/ (django-oauth-toolkit, its RS256 key
made here) as a subprocess, and real Hearth servers configured for it, driven by an HTTP client that follows the
redirects and fills in the provider's login form as a browser would."""

from __future__ import annotations

import html
import re
import sqlite3

import httpx
import pytest

from tests import servers
from tests.oidc_provider.server import CLIENT_ID, CLIENT_SECRET, OIDCProvider, start_hearth


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    provider = OIDCProvider(tmp_path_factory.mktemp("oidc-provider")).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def hearth(tmp_path_factory, provider):
    """Hearth with SSO beside passwords: example.com accounts only, the group hearth-admins makes admins."""
    server = start_hearth(tmp_path_factory.mktemp("hearth-sso"), provider)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sso_only(tmp_path_factory):
    """Hearth with password sign-in off, whose provider is nowhere to be reached (nothing listens on its port)."""
    server = servers.start_embedded(
        tmp_path_factory.mktemp("hearth-sso-only"), {},
        HEARTH_OIDC_ISSUER=f"http://127.0.0.1:{servers.free_port()}/o", HEARTH_OIDC_CLIENT_ID=CLIENT_ID,
        HEARTH_OIDC_CLIENT_SECRET=CLIENT_SECRET, HEARTH_OIDC_PROVIDER_NAME="Test SSO", HEARTH_LOCAL_LOGIN="off")
    yield server
    server.stop()


def browser(server: servers.HearthServer, follow: bool = True) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, follow_redirects=follow, timeout=30)


def form_value(page: str, name: str) -> str:
    return html.unescape(re.search(rf'name="{name}" value="([^"]*)"', page).group(1))


def sign_in_link(page: str) -> str:
    return html.unescape(re.search(r'href="([^"]+)" id="sso-login"', page).group(1))


def provider_login(client: httpx.Client, provider: OIDCProvider, page: httpx.Response, username: str,
                   **options) -> httpx.Response:
    """Fill in and send the provider's login form shown on `page`."""
    assert 'id="provider-login"' in page.text, page.text[:500]
    return client.post(str(page.url), data={
        "csrfmiddlewaretoken": form_value(page.text, "csrfmiddlewaretoken"), "username": username,
        "password": provider.password(username), "next": form_value(page.text, "next")}, **options)


def sign_in(server: servers.HearthServer, provider: OIDCProvider, username: str, client: httpx.Client | None = None,
            start: str = "/login/") -> tuple[httpx.Client, httpx.Response]:
    """Open `start`, press "Sign in with …", sign in at the provider if it asks; the page Hearth ends on."""
    client = client or browser(server)
    login_page = client.get(start)
    response = client.get(sign_in_link(login_page.text))
    if 'id="provider-login"' in response.text:
        response = provider_login(client, provider, response, username)
    return client, response


def location(redirect: httpx.Response) -> str:
    """Where a redirect (not followed) sends the browser, as an absolute URL."""
    assert redirect.is_redirect, (redirect.status_code, redirect.text[:500])
    return str(redirect.next_request.url)


def account(server: servers.HearthServer, username: str) -> dict | None:
    """The Hearth account's email, admin flag and groups, read from its database."""
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as db:
        row = db.execute("SELECT id, email, is_staff FROM auth_user WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        groups = sorted(name for (name,) in db.execute(
            "SELECT g.name FROM auth_group g JOIN auth_user_groups ug ON ug.group_id = g.id WHERE ug.user_id = ?",
            (row[0],)))
    return {"email": row[1], "is_staff": bool(row[2]), "groups": groups}


def signed_in_as(client: httpx.Client) -> str | None:
    page = client.get("/")
    match = re.search(r"Log out ([^<\s]+)", page.text)
    return match.group(1) if match else None


def test_it_offers_the_provider_beside_the_password_form(hearth):
    page = browser(hearth).get("/login/")
    assert "Sign in with Test SSO" in page.text
    assert 'name="password"' in page.text


def test_it_creates_the_user_on_their_first_sign_in_and_returns_to_the_page_asked_for(hearth, provider):
    provider.set_user("alice", email="alice@example.com", groups=["research"])
    assert account(hearth, "alice") is None

    client, response = sign_in(hearth, provider, "alice", start="/jobs/")

    assert response.status_code == 200 and response.url.path == "/jobs/"
    assert signed_in_as(client) == "alice"
    assert account(hearth, "alice") == {"email": "alice@example.com", "is_staff": False, "groups": ["research"]}


def test_it_makes_the_groups_follow_the_claim_at_every_sign_in(hearth, provider):
    provider.set_user("bob", email="bob@example.com", groups=["research", "writers"])
    sign_in(hearth, provider, "bob")
    assert account(hearth, "bob")["groups"] == ["research", "writers"]

    provider.set_user("bob", email="bob@example.com", groups=["writers", "translators"])
    client, _ = sign_in(hearth, provider, "bob")
    assert signed_in_as(client) == "bob"
    assert account(hearth, "bob")["groups"] == ["translators", "writers"]

    provider.set_user("bob", email="bob@example.com", groups=[])
    sign_in(hearth, provider, "bob")
    assert account(hearth, "bob")["groups"] == []
    # Each change is in the audit trail, made by single sign-on.
    with sqlite3.connect(hearth.data_dir / "hearth.sqlite3", timeout=30) as db:
        trail = db.execute("SELECT action, target FROM inference_auditevent WHERE details LIKE '%\"bob\"%' "
                           "OR target = 'bob' ORDER BY id").fetchall()
    assert trail == [("user.create", "bob"), ("group.member_add", "research"), ("group.member_add", "writers"),
                     ("group.member_add", "translators"), ("group.member_remove", "research"),
                     ("group.member_remove", "writers"), ("group.member_remove", "translators")]


def test_it_makes_members_of_an_admin_group_admins_and_takes_it_back(hearth, provider):
    provider.set_user("carol", email="carol@example.com", groups=["hearth-admins"])
    client, _ = sign_in(hearth, provider, "carol")
    assert account(hearth, "carol")["is_staff"] is True
    assert client.get("/users/", follow_redirects=False).status_code == 200

    provider.set_user("carol", email="carol@example.com", groups=["research"])
    client, _ = sign_in(hearth, provider, "carol")
    assert account(hearth, "carol") == {"email": "carol@example.com", "is_staff": False, "groups": ["research"]}
    assert client.get("/users/", follow_redirects=False).status_code != 200


def test_it_refuses_a_domain_it_does_not_allow_with_a_readable_page(hearth, provider):
    provider.set_user("mallory", email="mallory@other.org", groups=["hearth-admins"])

    client, response = sign_in(hearth, provider, "mallory")

    assert response.status_code == 403
    assert "open to accounts of example.com only" in response.text and "mallory@other.org" in response.text
    assert account(hearth, "mallory") is None
    assert signed_in_as(client) is None


def test_it_refuses_an_email_the_provider_has_not_verified(hearth, provider):
    provider.set_user("eve", email="eve@example.com", email_verified=False)

    _, response = sign_in(hearth, provider, "eve")

    assert response.status_code == 403 and "did not confirm that eve@example.com is verified" in response.text
    assert account(hearth, "eve") is None


def test_it_moves_a_local_account_to_single_sign_on_by_its_email(hearth, provider):
    hearth.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
                  "get_user_model().objects.create_user('dave', email='Dave@Example.com', password='dave-password-1')")
    provider.set_user("dave.sso", email="dave@example.com", groups=["research"])

    client, _ = sign_in(hearth, provider, "dave.sso")

    assert signed_in_as(client) == "dave"
    assert account(hearth, "dave.sso") is None
    assert account(hearth, "dave")["groups"] == ["research"]


def test_it_logs_out_of_hearth_and_of_the_provider(hearth, provider):
    provider.set_user("frank", email="frank@example.com")
    client, _ = sign_in(hearth, provider, "frank")
    assert signed_in_as(client) == "frank"

    page = client.post("/logout/", headers={"X-CSRFToken": client.cookies["csrftoken"],
                                            "Referer": f"{hearth.base_url}/"})
    assert signed_in_as(client) is None
    # On to the provider's logout (the page refreshes to it), which comes back to the login page.
    onwards = html.unescape(re.search(r'href="([^"]+)" id="sso-logout"', page.text).group(1))
    assert onwards.startswith(f"{provider.issuer}/logout/?") and 'http-equiv="refresh"' in page.text
    response = client.get(onwards)
    assert response.status_code == 200 and str(response.url) == f"{hearth.base_url}/login/"
    # The provider's session ended too: signing in again asks for the password there.
    again = client.get(sign_in_link(client.get("/login/").text))
    assert 'id="provider-login"' in again.text


def test_it_keeps_password_sign_in_beside_sso_and_logs_such_users_out_of_hearth_only(hearth):
    client = browser(hearth)
    client.get("/login/")
    client.post("/login/", data={"username": "admin", "password": servers.ADMIN_PASSWORD,
                                 "csrfmiddlewaretoken": client.cookies["csrftoken"]},
                headers={"Referer": f"{hearth.base_url}/login/"})
    assert signed_in_as(client) == "admin"

    response = client.post("/logout/", headers={"X-CSRFToken": client.cookies["csrftoken"],
                                                "Referer": f"{hearth.base_url}/"})

    assert str(response.url) == f"{hearth.base_url}/login/" and "sso-logout" not in response.text
    assert signed_in_as(client) is None


def test_it_shows_a_readable_page_when_the_provider_goes_down_mid_sign_in(hearth, provider):
    provider.set_user("grace", email="grace@example.com")
    client = browser(hearth, follow=False)
    to_provider = client.get(sign_in_link(client.get("/login/").text))
    login_form = client.get(location(to_provider), follow_redirects=True)
    authorize = provider_login(client, provider, login_form, "grace")
    callback = location(client.get(location(authorize)))
    assert callback.startswith(f"{hearth.base_url}/sso/callback/?")

    provider.stop()
    try:
        response = client.get(callback)
    finally:
        provider.start()

    assert response.status_code == 503
    assert "could not reach Test SSO" in response.text
    assert account(hearth, "grace") is None


@pytest.mark.parametrize(("query", "status", "says"), [
    ("code=forged&state=forged", 400, "This sign-in could not be checked"),
    ("error=access_denied&error_description=The+user+said+no", 403, "Test SSO answered: The user said no"),
])
def test_it_answers_a_callback_it_did_not_ask_for_with_a_readable_page(hearth, query, status, says):
    client = browser(hearth, follow=False)
    client.get("/sso/login/")  # a sign-in under way: its state is in the session, but it is not this one

    response = client.get(f"/sso/callback/?{query}")

    assert response.status_code == status and says in response.text
    assert signed_in_as(client) is None


def test_it_hides_the_password_form_when_local_login_is_off(sso_only):
    page = browser(sso_only).get("/login/")
    assert "Sign in with Test SSO" in page.text
    assert 'name="password"' not in page.text


def test_it_refuses_a_password_login_when_local_login_is_off(sso_only):
    client = browser(sso_only)
    client.get("/admin/login/")  # the login page has no form, so no CSRF token: take the admin page's
    response = client.post("/login/", data={"username": "admin", "password": servers.ADMIN_PASSWORD,
                                            "csrfmiddlewaretoken": client.cookies["csrftoken"]},
                           headers={"Referer": f"{sso_only.base_url}/login/"})
    assert response.status_code == 403 and "Password sign-in is switched off" in response.text
    assert signed_in_as(client) is None


@pytest.mark.parametrize(("username", "superuser", "let_in"), [("admin", True, True), ("operator", False, False)])
def test_it_keeps_the_admin_login_as_a_break_glass_door_for_superusers_only(sso_only, username, superuser, let_in):
    if not superuser:
        sso_only.manage("shell", "-c", "from django.contrib.auth import get_user_model; get_user_model().objects."
                        f"create_user({username!r}, password={servers.ADMIN_PASSWORD!r}, is_staff=True)")
    client = browser(sso_only)
    client.get("/admin/login/")
    client.post("/admin/login/?next=/admin/", data={
        "username": username, "password": servers.ADMIN_PASSWORD, "next": "/admin/",
        "csrfmiddlewaretoken": client.cookies["csrftoken"]}, headers={"Referer": f"{sso_only.base_url}/admin/login/"})
    assert (signed_in_as(client) == username) is let_in


def test_it_shows_a_readable_page_when_the_provider_cannot_be_reached(sso_only):
    response = browser(sso_only).get("/sso/login/")
    assert response.status_code == 503
    assert "could not reach Test SSO" in response.text
