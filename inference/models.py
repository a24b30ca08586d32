"""The model library and generation jobs."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from inference.engine.backends import BACKENDS

model_id_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
    "A model id starts with a letter or digit and uses only letters, digits and . _ : - (at most 128).",
)


class ModelFormat(models.TextChoices):
    GGUF = "gguf", "GGUF"
    HF_SAFETENSORS = "hf-safetensors", "Hugging Face safetensors"
    MLX = "mlx", "MLX"


class LocalModel(models.Model):
    """A model in the library: a validated file or directory on this server's disk."""

    name = models.CharField(max_length=128, unique=True, validators=[model_id_validator])
    path = models.CharField(max_length=1024)
    format = models.CharField(max_length=32, choices=ModelFormat.choices)
    architecture = models.CharField(max_length=64, blank=True)
    parameter_count = models.BigIntegerField(default=0)
    quantization = models.CharField(max_length=32, blank=True)
    context_length = models.IntegerField(default=0)
    chat_template = models.TextField(blank=True)
    chat_template_source = models.CharField(max_length=32, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    backend = models.CharField(
        max_length=16, choices=[(backend.name, backend.label) for backend in BACKENDS], blank=True,
        help_text="Empty: the format's native backend.",
    )
    metadata = models.JSONField(default=dict, blank=True)
    # Where a pulled model came from: {"source": "huggingface", "repo", "revision" (as asked), "commit", "files":
    # [{"name", "size", "sha256"}], "quant", "pulled_at"}, and the last update check ("latest_commit", "checked_at").
    provenance = models.JSONField(default=dict, blank=True)
    # The chat page's reply length when the conversation sets none (a user may raise it up to the context).
    default_max_tokens = models.PositiveIntegerField(
        default=1024, help_text="Longest reply of the chat page unless the conversation asks for more.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class GenerationJob(models.Model):
    """One generation. Written when queued, claimed, and finished; never per token."""

    class Kind(models.TextChoices):
        CHAT = "chat"
        COMPLETION = "completion"
        EMBEDDING = "embedding"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(LocalModel, null=True, on_delete=models.SET_NULL, related_name="jobs")
    model_name = models.CharField(max_length=128)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generation_jobs")
    api_key = models.ForeignKey("api.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT)
    request = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    backend = models.CharField(max_length=16, blank=True)
    # Backends tried before the one that served, each {"backend": name, "reason": why it could not}.
    fallbacks = models.JSONField(default=list, blank=True)
    output_text = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    time_to_first_token = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_text = models.TextField(blank=True)
    cached_tokens = models.IntegerField(default=0)  # of the prompt, reused from a worker's prefix cache
    # The worker process running the job holds it under a lease its heartbeat renews; a lapsed lease lets another
    # worker take the job over (each time counted here) and continue its stream.
    worker = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    takeovers = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.model_name} {self.status} {self.id}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class ModelConversion(models.Model):
    """A model turned into another format in the background (HF → GGUF, HF → MLX); the result joins the library."""

    class Target(models.TextChoices):
        GGUF = "gguf", "GGUF (llama.cpp)"
        MLX = "mlx", "MLX"

    source = models.ForeignKey(LocalModel, on_delete=models.CASCADE, related_name="conversions")
    target = models.CharField(max_length=8, choices=Target.choices)
    options = models.JSONField(default=dict, blank=True)  # {"type": "q4_k_m"} or {"bits": 4}
    result_name = models.CharField(max_length=128, validators=[model_id_validator])
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    result = models.ForeignKey(LocalModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_text = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)  # the converter running it (presence name)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.source} → {self.target} ({self.status})"

    @property
    def options_text(self) -> str:
        """The options as a person reads them: "4-bit", "Q4_K_M", "keep dtype" (not {'bits': None})."""
        options = self.options if isinstance(self.options, dict) else {}
        parts = []
        for key, value in options.items():
            if key == "bits":
                parts.append("keep dtype" if value in (None, "") else f"{value}-bit")
            elif key == "type":
                parts.append(str(value).upper() if value else "default type")
            elif value not in (None, ""):
                parts.append(f"{key.replace('_', ' ')} {value}")
        return ", ".join(parts)


class ModelPull(models.Model):
    """A model fetched from the Hugging Face Hub in the background (inference/pulls.py); the result joins the
    library through the same import as `import_model`. Progress lives on the row: bytes done of total, speed."""

    class Phase(models.TextChoices):
        RESOLVING = "resolving"  # asking the hub what the repo holds
        DOWNLOADING = "downloading"
        VERIFYING = "verifying"  # a file's checksum
        IMPORTING = "importing"  # the library's format validation

    repo = models.CharField(max_length=200)
    revision = models.CharField(max_length=200, default="main")  # as asked: a branch, tag or commit
    file = models.CharField(max_length=500, blank=True)  # a GGUF file asked for by name
    quant = models.CharField(max_length=32, blank=True)  # or a quantization ("Q4_K_M")
    result_name = models.CharField(max_length=128, blank=True)  # the library id (chosen once the files are known)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    commit = models.CharField(max_length=64, blank=True)
    format = models.CharField(max_length=32, blank=True)
    files = models.JSONField(default=list, blank=True)  # [{"name", "size", "sha256", "blob_id"}], the plan
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    phase = models.CharField(max_length=16, choices=Phase.choices, blank=True)
    current_file = models.CharField(max_length=500, blank=True)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    bytes_per_second = models.FloatField(default=0.0)
    error_code = models.CharField(max_length=32, blank=True)
    error_text = models.TextField(blank=True)
    result = models.ForeignKey(LocalModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    worker = models.CharField(max_length=200, blank=True)  # the puller (or embedded server) running it
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.repo} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0

    @property
    def seconds_left(self) -> float | None:
        if self.bytes_per_second <= 0 or not self.bytes_total:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.bytes_per_second)

    @property
    def label(self) -> str:
        """What was asked: "owner/name" with its file or quantization and revision."""
        choice = self.file or self.quant
        return self.repo + (f":{choice}" if choice else "") + (f"@{self.revision}" if self.revision != "main" else "")
