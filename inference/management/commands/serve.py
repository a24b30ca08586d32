import os
import sys

from daphne.cli import CommandLineInterface
from daphne.server import Server
from django.conf import settings
from django.core.management.base import BaseCommand


class ServerWithoutQueryStringsInLog(Server):
    """daphne's server, whose access log shows each request's path without its query string: a query string can
    carry a secret (an API key sent as ?api_key=, which the API refuses, or a search), and logs travel further than
    the server."""

    def log_action(self, protocol, action, details):
        if isinstance(details.get("path"), str):
            details = {**details, "path": details["path"].split("?", 1)[0]}
        super().log_action(protocol, action, details)


class HearthCommandLineInterface(CommandLineInterface):
    server_class = ServerWithoutQueryStringsInLog


class Command(BaseCommand):
    help = "Serve Hearth with daphne; in the embedded mode, with a generation worker thread in the same process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HEARTH_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("HEARTH_PORT", "8000")))

    def handle(self, *args, host, port, **options):
        from inference.leases import start_reaper_thread
        from webui.uploads import upload_sweep

        upload_sweep()  # partial files of uploads abandoned while the server was down
        if settings.HEARTH_EMBEDDED_WORKER:
            from inference.embedded import start_embedded_worker

            start_embedded_worker()  # its heartbeat runs the reaper
        else:
            start_reaper_thread()
        login = ""
        if settings.HEARTH_ADMIN_SECRET_FILE.exists():
            login = f" Log in as admin; the password is in {settings.HEARTH_ADMIN_SECRET_FILE}."
        self.stdout.write(f"Hearth is serving on http://{host}:{port}/ .{login}", ending="\n")
        self.stdout.flush()
        # X-Forwarded-For/-Proto are believed only when a proxy in front is declared trusted. run() returns when
        # daphne stops (SIGTERM, SIGINT): open connections are closed by then.
        proxy = ["--proxy-headers"] if settings.HEARTH_TRUSTED_PROXY_HEADER else []
        HearthCommandLineInterface().run(["-b", host, "-p", str(port), *proxy, "config.asgi:application"])
        if settings.HEARTH_EMBEDDED_WORKER:
            self._stop_embedded_worker()
        sys.stdout.flush()
        sys.stderr.flush()
        # Native threads of the backends (llama.cpp's, torch's) must not meet the interpreter's teardown.
        os._exit(0)

    def _stop_embedded_worker(self) -> None:
        """Stop the engine and close the models before the process ends; jobs still running are handed back
        (they continue when the server starts again, or fail then if nobody follows them any more)."""
        from inference.runner import shut_down, worker_name
        from inference.tasks import _heartbeats

        handed = shut_down(worker_name())
        for beat in list(_heartbeats.values()):
            beat.stop()
        if handed:
            self.stdout.write(f"{handed} unfinished job(s) handed back to the queue.")
