from django.core.management.base import BaseCommand

from webui.uploads import upload_sweep


class Command(BaseCommand):
    help = ("Remove the partial files of model uploads that received nothing for HEARTH_UPLOAD_ABANDON_HOURS "
            "(also done when the server starts and whenever an upload starts).")

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=float, default=None,
                            help="age limit in hours (default: HEARTH_UPLOAD_ABANDON_HOURS)")

    def handle(self, *args, hours, **options):
        removed = upload_sweep(hours)
        for name in removed:
            self.stdout.write(f"removed {name}")
        self.stdout.write(f"{len(removed)} abandoned upload(s) swept.")
