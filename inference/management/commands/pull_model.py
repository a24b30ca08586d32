import time

from django.core.management.base import BaseCommand, CommandError

from inference.engine.base import EngineError
from inference.models import FINISHED_STATUSES, JobStatus, ModelPull
from inference.presence import PULLER, get_presence
from inference.pulls import Snapshot, progress_text, pull_progress_text, pull_run, pull_start


class Command(BaseCommand):
    help = (
        "Pull a model from the Hugging Face Hub into the library, with progress; an interrupted pull resumes where it "
        "stopped. A GGUF repo: one GGUF model (Q4_K_M when it has one, else the smallest of at least 4 bits); a "
        "safetensors repo: the files a Hugging Face folder import needs. A running puller takes the job; with none, "
        "it runs here. Gated or private repos need HF_TOKEN."
    )

    def add_arguments(self, parser):
        parser.add_argument("repo", help="owner/name as on the hub (Qwen/Qwen3-0.6B-GGUF), or hf.co/owner/name:Q8_0")
        choice = parser.add_mutually_exclusive_group()
        choice.add_argument("--file", default="", help="the GGUF file to pull (the first part of a split one)")
        choice.add_argument("--quant", default="", help="the quantization to pull, e.g. Q4_K_M or Q8_0")
        parser.add_argument("--revision", default="main", help="a branch, tag or commit (default main)")
        parser.add_argument("--name", default="", help="the model id in the library (default: from the file name)")

    def handle(self, *args, repo, file, quant, revision, name, **options):
        from inference.hub import HubError, parse_reference

        try:
            repo, tag = parse_reference(repo)
        except HubError as error:
            raise CommandError(error.message) from None
        if tag and not (file or quant):
            file, quant = (tag, "") if tag.lower().endswith(".gguf") else ("", tag)
        on_worker = bool(get_presence(PULLER).live_workers())
        try:
            pull = pull_start(repo, file=file, quant=quant, revision=revision, name=name, dispatch=on_worker)
        except EngineError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"Pulling {pull.label}" + (" on a puller" if on_worker else ""))
        if on_worker:
            pull = self._follow(pull.pk)
        elif pull.status == JobStatus.QUEUED:
            pull = pull_run(pull.pk, on_progress=self._printer())
        else:  # the same pull is already running elsewhere
            pull = self._follow(pull.pk)
        if pull.status != JobStatus.SUCCEEDED:
            raise CommandError(f"The pull {pull.status}: {pull.error_text}")
        model = pull.result
        self.stdout.write(f"Added {model.name} to the library: {model.get_format_display()}, {model.architecture}, "
                          f"{model.quantization or '-'}, from {pull.repo} at {pull.commit[:12]} ({model.path}).")

    def _printer(self):
        shown = [0.0, ""]

        def show(snapshot: Snapshot) -> None:
            line = progress_text(snapshot.phase, snapshot.current_file, snapshot.bytes_done, snapshot.bytes_total,
                                 snapshot.bytes_per_second)
            now = time.monotonic()
            if now - shown[0] >= 1 or snapshot.phase != shown[1]:
                self.stdout.write(line)
                shown[:] = [now, snapshot.phase]

        return show

    def _follow(self, pull_id: int) -> ModelPull:
        while True:
            pull = ModelPull.objects.select_related("result").get(pk=pull_id)
            if pull.status in FINISHED_STATUSES:
                return pull
            self.stdout.write(pull_progress_text(pull))
            time.sleep(1)
