"""The compiled few-rows linear of the torch engine gives what F.linear gives, and without a compiler the
engine still works through F.linear."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.torch.models import matvec


def bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).to(torch.bfloat16)


@pytest.fixture(scope="module")
def compiled():
    if matvec.warm_up(64, torch.bfloat16, "cpu") is not None:
        pytest.fail(f"the compiled kernel should build on this machine: {matvec.compiled_kernel.disabled_reason}")


@pytest.mark.parametrize("shape", [(1, 64), (1, 1, 64), (64,)])
def test_it_matches_f_linear_for_one_row_in_bf16(compiled, shape):
    x, weight = bf16(*shape), bf16(300, 64)
    assert matvec.uses_compiled_kernel(x, weight)
    ours, plain = matvec.linear(x, weight), F.linear(x, weight)
    assert ours.shape == plain.shape and ours.dtype == torch.bfloat16
    # both accumulate in fp32 and round once to bf16; only the order of the sums differs
    assert torch.allclose(ours.float(), plain.float(), rtol=2e-2, atol=2e-2)


def test_it_takes_bias_parameters_and_strided_rows(compiled):
    layer = nn.Linear(64, 96, bias=True).to(torch.bfloat16)
    hidden = bf16(1, 5, 64)
    last = hidden[:, -1]  # a view with a storage offset, as the last prompt position is
    ours = matvec.linear(last, layer.weight, layer.bias)
    assert torch.allclose(ours.float(), layer(last).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("rows", [2, 3, 4])
def test_it_matches_f_linear_for_up_to_four_rows_on_a_tall_weight(compiled, rows):
    x, weight = bf16(rows, 1, 64), bf16(1000, 64)
    assert matvec.uses_compiled_kernel(x, weight)
    ours, plain = matvec.linear(x, weight), F.linear(x, weight)
    assert ours.shape == plain.shape == (rows, 1, 1000)
    assert torch.allclose(ours.float(), plain.float(), rtol=2e-2, atol=2e-2)


def test_it_matches_f_linear_in_fp32_to_rounding(compiled):
    x, weight = bf16(1, 64).float(), torch.randn(300, 64, generator=torch.Generator().manual_seed(3))
    assert matvec.uses_compiled_kernel(x, weight)
    assert (matvec.linear(x, weight) - F.linear(x, weight)).abs().max().item() < 1e-5


def test_it_leaves_many_rows_square_weights_and_mixed_dtypes_to_f_linear():
    tall, square = bf16(256, 64), bf16(64, 64)
    assert not matvec.uses_compiled_kernel(bf16(5, 64), tall)
    assert not matvec.uses_compiled_kernel(bf16(2, 64), square)
    assert matvec.uses_compiled_kernel(bf16(1, 64), square)
    assert not matvec.uses_compiled_kernel(bf16(1, 64).float(), tall)
    x = bf16(5, 64)
    assert torch.equal(matvec.linear(x, tall), F.linear(x, tall))


def test_one_compiled_graph_per_row_count_serves_every_weight_shape(compiled):
    import torch._dynamo.utils as dynamo_utils

    for rows in (1, 2):
        matvec.linear(bf16(rows, 64), bf16(300, 64))
    dynamo_utils.counters.clear()
    for n_out, width in [(170, 64), (640, 128), (4096, 32), (4100, 2048)]:
        weight = nn.Parameter(bf16(n_out, width), requires_grad=False)
        for rows in (1, 2):
            x = bf16(3, rows, width)[-1]  # a view at an offset, as hidden[:, -1] is
            with torch.no_grad():  # outside inference mode too
                out = matvec.linear(x, weight)
            assert torch.allclose(out.float(), F.linear(x, weight).float(), rtol=2e-2, atol=2e-2)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 0  # no new compilation for new shapes


def test_without_a_compiler_it_falls_back_to_f_linear_and_says_why(tmp_path):
    script = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from inference.engine.torch.models import matvec
        x, w = torch.randn(1, 64).to(torch.bfloat16), torch.randn(50, 64).to(torch.bfloat16)
        reason = matvec.warm_up(64, torch.bfloat16, "cpu")
        assert reason, "the kernel should be unavailable"
        assert torch.equal(matvec.linear(x, w), F.linear(x, w))
        print("REASON", reason)
    """)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REASON" in done.stdout


def test_hearth_torch_compile_off_skips_compilation(tmp_path):
    script = ("import torch; from inference.engine.torch.models import matvec; "
              "print(matvec.warm_up(64, torch.bfloat16, 'cpu'))")
    env = {**os.environ, "HEARTH_TORCH_COMPILE": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEARTH_TORCH_COMPILE is off" in done.stdout


def test_every_row_count_dtype_and_bias_compiles_without_reaching_dynamos_graph_limit(compiled):
    for dtype in (torch.float32, torch.bfloat16):
        weight, bias = bf16(200, 32).to(dtype), bf16(200).to(dtype)
        for rows in range(1, matvec.MAX_ROWS + 1):
            x = bf16(rows, 32).to(dtype)
            for b in (None, bias):
                assert matvec.uses_compiled_kernel(x, weight)
                out = matvec.linear(x, weight, b)
                assert torch.allclose(out.float(), F.linear(x, weight, b).float(), rtol=2e-2, atol=2e-2)
    assert matvec.compiled_kernel.disabled_reason is None
