from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api.services import key_create


class Command(BaseCommand):
    help = "Create an API key for a user and print it alone on stdout (it is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if not user.is_active:
            raise CommandError(f"The user {username!r} is deactivated.")
        _key, text = key_create(None, user, name=name)
        self.stdout.write(text)
