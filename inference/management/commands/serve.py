import os

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve Hearth with daphne; in the embedded mode, with a generation worker thread in the same process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HEARTH_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("HEARTH_PORT", "8000")))

    def handle(self, *args, host, port, **options):
        from daphne.cli import CommandLineInterface

        from webui.uploads import upload_sweep

        upload_sweep()  # partial files of uploads abandoned while the server was down
        if settings.HEARTH_EMBEDDED_WORKER:
            from inference.embedded import start_embedded_worker

            start_embedded_worker()
        login = ""
        if settings.HEARTH_ADMIN_SECRET_FILE.exists():
            login = f" Log in as admin; the password is in {settings.HEARTH_ADMIN_SECRET_FILE}."
        self.stdout.write(f"Hearth is serving on http://{host}:{port}/ .{login}", ending="\n")
        self.stdout.flush()
        CommandLineInterface().run(["-b", host, "-p", str(port), "--proxy-headers", "config.asgi:application"])
