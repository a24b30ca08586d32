import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from api.services import key_create

ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = (
        "On first run, create the superuser 'admin' (password from HEARTH_ADMIN_PASSWORD, else generated) with an "
        "API key and keep them in a file only its owner can read; on a terminal, also print them once (never into "
        "a log: without a terminal only the file's location is printed)."
    )

    def handle(self, *args, **options):
        users = get_user_model()
        secret_file: Path = settings.HEARTH_ADMIN_SECRET_FILE
        if users.objects.filter(username=ADMIN_USERNAME).exists():
            where = f" (see {secret_file})" if secret_file.exists() else ""
            self.stdout.write(f"Log in as '{ADMIN_USERNAME}'{where}.")
            return
        password = os.environ.get("HEARTH_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        admin = users.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
        _key, api_key = key_create(None, admin, name="created on first run")
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"username: {ADMIN_USERNAME}\npassword: {password}\napi_key: {api_key}\n")
        os.chmod(secret_file, 0o600)
        if not self.stdout.isatty():  # a container's or service's log: more people read it than should log in
            self.stdout.write(f"Created the superuser '{ADMIN_USERNAME}'. Its password and an API key are in "
                              f"{secret_file} (readable only by the server's user); they are never printed here.")
            return
        self.stdout.write(
            f"Created the superuser '{ADMIN_USERNAME}' with password: {password}\n"
            f"API key: {api_key}\n"
            f"Both are kept in {secret_file} (readable only by you); they are not shown again."
        )
