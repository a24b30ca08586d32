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
    # Who may use it (inference/access.py): everyone, or only the members of these groups (and admins).
    open_to_everyone = models.BooleanField(
        default=True, help_text="Every user may use this model; off: only the chosen groups' members and admins.")
    allowed_groups = models.ManyToManyField("auth.Group", blank=True, related_name="models")
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


class AuditEvent(models.Model):
    """Who did what, when: model, user, group, key and quota changes (inference/audit.py writes them)."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)  # kept when the actor's account is deleted
    action = models.CharField(max_length=64, db_index=True)  # "model.upload", "key.revoke", "quota.set", …
    target = models.CharField(max_length=255, blank=True)  # what it acted on, as a person reads it
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"


# ---------------------------------------------------------------------------------------------------------
# Token quotas and usage (inference/quotas.py, inference/usage.py).


class QuotaPeriod(models.TextChoices):
    DAY = "day", "daily"
    MONTH = "month", "monthly"


class TokenQuota(models.Model):
    """An admin's limit on prompt + completion tokens of one user, one group (its members together) or one API key
    over a calendar day or month in the server's TIME_ZONE. Every quota that applies is checked: the smallest
    wins."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="+")
    group = models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("api.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=8, choices=QuotaPeriod.choices)
    tokens = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False, group__isnull=True, api_key__isnull=True)
                           | models.Q(user__isnull=True, group__isnull=False, api_key__isnull=True)
                           | models.Q(user__isnull=True, group__isnull=True, api_key__isnull=False)),
                name="quota_one_subject"),
            models.UniqueConstraint(fields=["user", "period"], name="quota_user_period"),
            models.UniqueConstraint(fields=["group", "period"], name="quota_group_period"),
            models.UniqueConstraint(fields=["api_key", "period"], name="quota_key_period"),
        ]

    def __str__(self) -> str:
        return f"{self.get_period_display()} {self.tokens} tokens for {self.subject_label}"

    @property
    def scope(self) -> str:
        return "user" if self.user_id else "group" if self.group_id else "key"

    @property
    def subject_label(self) -> str:
        if self.user_id:
            return f"user {self.user.get_username()}"
        if self.group_id:
            return f"group {self.group.name}"
        return f"API key {self.api_key.prefix} ({self.api_key.name or 'unnamed'}, {self.api_key.owner})"


class QuotaCounter(models.Model):
    """A quota's tokens in one window: `used` (settled from finished jobs) and `reserved` (estimates of jobs not
    finished yet). Admission is one conditional UPDATE per counter, so two requests cannot both take the last
    tokens."""

    quota = models.ForeignKey(TokenQuota, on_delete=models.CASCADE, related_name="counters")
    window_start = models.DateField()
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["quota", "window_start"], name="quota_counter_window")]


class QuotaReservation(models.Model):
    """A job's estimate held on the counters it was admitted on, until its end settles it to its real tokens.
    `job_id` is not a foreign key: a reservation outlives a deleted job, and the sweep settles it (to 0)."""

    job_id = models.UUIDField(unique=True)
    tokens = models.BigIntegerField()
    counters = models.JSONField(default=list)  # QuotaCounter ids
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)


# Fixed log buckets of the usage rollups, so medians come from the rollups: bucket i holds values below EDGES[i]
# (the last bucket: the rest). Time to first token in seconds; decode speed in tokens per second.
TTFT_EDGES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2)
TPS_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BUCKETS = len(TTFT_EDGES) + 1


class UsageCounts(models.Model):
    """What the usage rollups count, per user, API key (0: the chat pages) and model."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    api_key_id = models.IntegerField(default=0)
    model_name = models.CharField(max_length=128)
    requests = models.IntegerField(default=0)
    failures = models.IntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class UsageHour(UsageCounts):
    """Jobs that ended in one hour (UTC): the busiest hours of the usage page. Written when a job ends
    (inference/usage.py); `rebuild_usage` recomputes them from the jobs."""

    hour = models.DateTimeField()
    # The hour's date and hour of the day in TIME_ZONE, written with it (rebuild_usage after changing TIME_ZONE).
    day = models.DateField()
    hour_of_day = models.SmallIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "user", "api_key_id", "model_name"],
                                               name="usage_hour_row")]
        indexes = [models.Index(fields=["day"])]  # (hour first: the unique constraint's index)


class UsageDay(UsageCounts):
    """Jobs that ended on one day (TIME_ZONE), with histograms of their speed: the usage page's charts, its CSV and
    the quotas' windows read these (a year is at most 366 rows per user, key and model)."""

    day = models.DateField()
    # Histograms: ttft_i / tps_i count the jobs in bucket i (TTFT_EDGES, TPS_EDGES).
    for _i in range(BUCKETS):
        vars()[f"ttft_{_i}"] = models.IntegerField(default=0)
        vars()[f"tps_{_i}"] = models.IntegerField(default=0)
    del _i

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "user", "api_key_id", "model_name"],
                                               name="usage_day_row")]
