"""The single sign-on settings fail loudly, at start, on values that cannot work (config/settings.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.servers import PYTHON, ROOT, base_env

GOOD = {"HEARTH_OIDC_ISSUER": "https://sso.example.com/realms/team", "HEARTH_OIDC_CLIENT_ID": "hearth",
        "HEARTH_OIDC_CLIENT_SECRET": "s3cret"}


def settings_error(tmp_path, **env: str) -> str:
    """What importing the settings with these variables says (empty when they load)."""
    result = subprocess.run([PYTHON, "-c", "import config.settings"], cwd=ROOT, env=base_env(tmp_path, **env),
                            capture_output=True, text=True, timeout=120)
    return result.stderr if result.returncode else ""


@pytest.mark.parametrize(("env", "says"), [
    ({**GOOD, "HEARTH_OIDC_ISSUER": "sso.example.com"}, "is not an http(s) URL"),
    ({"HEARTH_OIDC_ISSUER": GOOD["HEARTH_OIDC_ISSUER"]}, "also set HEARTH_OIDC_CLIENT_ID"),
    ({"HEARTH_OIDC_CLIENT_ID": "hearth"}, "without HEARTH_OIDC_ISSUER"),
    ({"HEARTH_LOCAL_LOGIN": "off"}, "nobody could sign in"),
    ({**GOOD, "HEARTH_LOCAL_LOGIN": "sometimes"}, "is not a boolean"),
    ({**GOOD, "HEARTH_OIDC_ALLOWED_DOMAINS": "example.com, localhost"}, "'localhost' is not a domain"),
    ({**GOOD, "HEARTH_OIDC_SCOPES": "email profile"}, "lacks the scope 'openid'"),
    ({**GOOD, "HEARTH_OIDC_TIMEOUT": "0"}, "below its minimum"),
    ({**GOOD, "HEARTH_OIDC_GROUPS_CLAIM": "", "HEARTH_OIDC_ADMIN_GROUPS": "admins"}, "needs a groups claim"),
])
def test_it_refuses_to_start_with_sso_settings_that_cannot_work(tmp_path, env, says):
    assert says in settings_error(tmp_path, **env)


def test_it_starts_with_sso_and_local_login_off(tmp_path):
    assert settings_error(tmp_path, **GOOD, HEARTH_LOCAL_LOGIN="off", HEARTH_OIDC_ALLOWED_DOMAINS="example.com") == ""
