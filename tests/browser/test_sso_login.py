"""Single sign-on in Chromium: the login page's button, the provider's form, back to Hearth signed in, and logout
through the provider (tests/oidc_provider/ as the provider)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.oidc_provider.server import OIDCProvider, start_hearth

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    provider = OIDCProvider(tmp_path_factory.mktemp("oidc-provider")).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def hearth(tmp_path_factory, provider):
    server = start_hearth(tmp_path_factory.mktemp("hearth-sso"), provider)
    yield server
    server.stop()


def test_it_signs_in_and_out_through_the_provider(page, provider, hearth):
    provider.set_user("heidi", email="heidi@example.com", groups=["research"])
    sign_in = page.get_by_role("link", name="Sign in with Test SSO")

    page.goto(f"{hearth.base_url}/jobs/")
    sign_in.click()
    page.get_by_label("Username").fill("heidi")
    page.get_by_label("Password").fill(provider.password("heidi"))
    page.get_by_role("button", name="Sign in").click()

    page.wait_for_url(f"{hearth.base_url}/jobs/")
    log_out = page.get_by_role("button", name="Log out heidi")
    expect(log_out).to_be_visible()

    log_out.click()  # Hearth's logout, then the provider's, then back to Hearth's login page
    page.wait_for_url(f"{hearth.base_url}/login/")
    expect(sign_in).to_be_visible()
    sign_in.click()  # the provider forgot heidi too: it asks again
    expect(page.locator("#provider-login")).to_be_visible()
