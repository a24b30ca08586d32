"""Start and stop the test OpenID Connect provider (a `django runserver` subprocess on a free port)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.servers import PYTHON, ROOT, free_port


def rs256_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class OIDCProvider:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "rs256.pem").write_text(rs256_key_pem())
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "DATABASE_URL"))},
                    "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings", "OIDC_PROVIDER_DIR": str(data_dir),
                    "OIDC_PROVIDER_ISSUER": self.issuer, "PYTHONUNBUFFERED": "1"}
        subprocess.run([PYTHON, "-m", "django", "migrate", "--noinput"], cwd=ROOT, env=self.env, check=True,
                       capture_output=True, timeout=300)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/o"

    def start(self, timeout: float = 60) -> OIDCProvider:
        log = (self.data_dir / "provider.log").open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "django", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the OIDC provider did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        log = self.data_dir / "provider.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def _update(self, name: str, key: str, value: dict) -> None:
        path = self.data_dir / name
        records = json.loads(path.read_text()) if path.exists() else {}
        records[key] = value
        path.write_text(json.dumps(records))

    def set_user(self, username: str, *, email: str, groups: list[str] | None = None, password: str = "",
                 email_verified: bool = True) -> None:
        """Add or change a user of the provider (their claims at their next sign-in)."""
        self._update("users.json", username, {"password": password or f"{username}-password", "email": email,
                                              "email_verified": email_verified, "groups": groups or []})

    def password(self, username: str) -> str:
        return json.loads((self.data_dir / "users.json").read_text())[username]["password"]

    def add_client(self, client_id: str, secret: str, hearth_url: str) -> None:
        """Register a Hearth as a confidential client: its callback, and its login page after logout."""
        self._update("clients.json", client_id, {"secret": secret,
                                                 "redirect_uris": [f"{hearth_url}/sso/callback/"],
                                                 "post_logout_redirect_uris": [f"{hearth_url}/login/"]})


CLIENT_ID = "hearth"
CLIENT_SECRET = "hearth-client-secret-for-the-tests"


def start_hearth(data_dir: Path, provider: OIDCProvider, **env: str):
    """An embedded Hearth registered at `provider` as a client, with SSO as HEARTH_OIDC_* (and `env`) set it:
    example.com accounts only, the group hearth-admins makes admins, the button says "Test SSO"."""
    from tests import servers

    settings = {"HEARTH_OIDC_ISSUER": provider.issuer, "HEARTH_OIDC_CLIENT_ID": CLIENT_ID,
                "HEARTH_OIDC_CLIENT_SECRET": CLIENT_SECRET, "HEARTH_OIDC_ALLOWED_DOMAINS": "example.com",
                "HEARTH_OIDC_ADMIN_GROUPS": "hearth-admins", "HEARTH_OIDC_PROVIDER_NAME": "Test SSO", **env}
    server = servers.start_embedded(data_dir, {}, **settings)
    provider.add_client(CLIENT_ID, CLIENT_SECRET, server.base_url)
    return server
