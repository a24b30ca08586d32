from django.core.management.base import BaseCommand, CommandError

from inference.engine.backends import BACKENDS
from inference.engine.base import ModelRefused
from inference.services import model_import


class Command(BaseCommand):
    help = "Validate a model file or directory (GGUF, Hugging Face safetensors, MLX) and add it to the library."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", help="The model id clients use (default: from the file name).")
        parser.add_argument("--backend", choices=[backend.name for backend in BACKENDS], default="",
                            help="Default: the backend the format selects.")

    def handle(self, *args, path, name, backend, **options):
        try:
            model = model_import(path, name=name, backend=backend)
        except ModelRefused as error:
            raise CommandError(error.message) from None
        self.stdout.write(
            f"Imported {model.name}: {model.get_format_display()}, {model.architecture}, "
            f"{model.parameter_count:,} parameters, {model.quantization}, context {model.context_length}"
        )
