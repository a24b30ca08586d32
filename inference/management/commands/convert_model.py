import time

from django.core.management.base import BaseCommand, CommandError

from inference.conversions import GGUF_TYPES, conversion_run, conversion_start
from inference.engine.base import EngineError
from inference.models import JobStatus, ModelConversion
from inference.presence import CONVERTER, get_presence
from inference.selectors import model_by_name


class Command(BaseCommand):
    help = (
        "Convert a Hugging Face model of the library to GGUF (for llama.cpp) or MLX, as a background job with "
        "progress; the result joins the library. A running converter takes the job; with none, it runs here."
    )

    def add_arguments(self, parser):
        parser.add_argument("model_id")
        parser.add_argument("--to", required=True, choices=["gguf", "mlx"])
        parser.add_argument("--type", default="f16", choices=GGUF_TYPES, help="GGUF tensor type (default f16).")
        parser.add_argument("--bits", type=int, choices=[4, 8], help="MLX quantization (default: keep the dtype).")
        parser.add_argument("--name", help="Id of the converted model (default: <model>-<type>).")

    def handle(self, *args, model_id, to, type, bits, name, **options):
        source = model_by_name(model_id)
        if source is None:
            raise CommandError(f"No model {model_id!r} in the library.")
        on_worker = bool(get_presence(CONVERTER).live_workers())
        try:
            conversion = conversion_start(source, to, gguf_type=type, bits=bits, name=name, dispatch=on_worker)
        except EngineError as error:
            raise CommandError(error.message) from None
        conversion = self._follow(conversion.pk) if on_worker else conversion_run(conversion.pk)
        if conversion.status != JobStatus.SUCCEEDED:
            raise CommandError(f"The conversion failed: {conversion.error_text}")
        self.stdout.write(f"Converted {source.name} into {conversion.result.name} ({conversion.result.path}).")

    def _follow(self, conversion_id: int) -> ModelConversion:
        shown = -1
        while True:
            conversion = ModelConversion.objects.select_related("result").get(pk=conversion_id)
            percent = int(conversion.progress * 100)
            if percent != shown:
                self.stdout.write(f"{conversion.status}: {percent}%")
                shown = percent
            if conversion.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                return conversion
            time.sleep(1)
