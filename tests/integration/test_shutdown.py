"""`manage.py serve` (the embedded mode: web and worker in one process) stopped with SIGTERM mid-reply: it exits 0,
with no crash of llama.cpp's threads on the way out."""

from __future__ import annotations

import os
import signal
import threading

import httpx

from tests.servers import start_embedded


def test_serve_stopped_with_sigterm_mid_reply_exits_0_without_a_crash(tmp_path, demo_gguf):
    server = start_embedded(tmp_path / "serve", {"demo": demo_gguf})
    try:
        body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True,
                "logit_bias": {"1": -100, "106": -100}}
        started = threading.Event()

        def read() -> None:
            try:
                with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60,
                                  headers={"Authorization": f"Bearer {server.api_key}"}) as response:
                    for _ in response.iter_lines():
                        started.set()
            except httpx.HTTPError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        assert started.wait(60), server.log_tail()
        [web] = server.processes
        os.killpg(web.pid, signal.SIGTERM)
        assert web.wait(timeout=30) == 0, server.log_tail()
        reader.join(timeout=30)
        log = server.logs[0].read_text(errors="replace")
        assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
    finally:
        server.stop()
