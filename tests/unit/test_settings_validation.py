"""Settings fail loudly, at start, on a value that names no backend: never a job failing later for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start_with(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env})


@pytest.mark.parametrize("env, said", [
    ({"HEARTH_DEFAULT_BACKEND": "tensorrt"}, "HEARTH_DEFAULT_BACKEND='tensorrt' is no backend; use llamacpp, torch or mlx."),
    ({"HEARTH_FALLBACK_CHAINS": '{"llamacpp": ["vllm"]}'}, "HEARTH_FALLBACK_CHAINS names vllm, which is no backend"),
    ({"HEARTH_FALLBACK_CHAINS": '["torch"]'}, "HEARTH_FALLBACK_CHAINS maps a backend to the list tried after it"),
])
def test_it_refuses_to_start_with_a_backend_setting_that_names_no_backend(env, said):
    started = start_with(**env)
    assert started.returncode != 0
    assert said in started.stderr


def test_it_starts_with_known_backends_in_its_chains():
    assert start_with(HEARTH_DEFAULT_BACKEND="torch", HEARTH_FALLBACK_CHAINS='{"torch": ["llamacpp", "mlx"]}'
                      ).returncode == 0
