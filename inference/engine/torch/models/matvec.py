"""Linear layers for decoding on CPU: a few rows (one per sequence) times a weight matrix, fp32 or bf16.

For a few input rows PyTorch's CPU matmul is compute-bound here: bf16 (oneDNN) streams weights at about
14 GB/s (the 262k x 640 output projection of Gemma 3 270M takes 23 ms, against 11 ms at memory speed), and
fp32 for one row runs on one thread at about 8 GB/s. The same product written as a reduction,
`sum(weight * row)` with an fp32 accumulator and the rows unrolled, and compiled by Inductor
(`torch.compile`: C++ with OpenMP) reads each weight element once at memory speed (about 29 GB/s).
Shapes are symbolic, so one compilation per row count (1 to MAX_ROWS) and dtype serves every weight of
every model; Inductor keeps the kernels in its on-disk cache (`TORCHINDUCTOR_CACHE_DIR`), so a later process
pays a second or two instead of the first compilation (about 15 s here).

The rest (more rows, CUDA, and 2-4 rows on square or wide weights) goes to `F.linear`, which is as fast
there. So does everything when compilation is unavailable (no C++ compiler, `HEARTH_TORCH_COMPILE=0`) or
fails once: the engine then logs why and keeps working, only slower.
"""

from __future__ import annotations

import logging
import os
import threading

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

COMPILED_DTYPES = (torch.float32, torch.bfloat16)  # CPU fp16 is refused at load
MAX_ROWS = 4  # each row count is its own compiled graph


def _rows_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, C) in fp32 and weight (N, C) in fp32 or bf16 -> (M, N) in the weight's dtype, accumulated in
    fp32. The rows are unrolled, so the kernel loads and converts each weight element once for all of them;
    x comes in fp32 already (converting it inside, once per weight element, made 4 rows 1.6x slower). A bias
    is added outside: inside, Inductor writes the sums to a buffer and adds the bias in a second,
    single-threaded pass, which made one row 1.5x slower."""
    wide = weight.float()
    return torch.stack([(wide * row).sum(-1) for row in x.unbind(0)]).to(weight.dtype)


# Dynamo keeps at most `recompile_limit` (8) graphs per compiled function and then fails: 4 row counts for
# each of 2 dtypes would reach it, so each dtype has a function of its own to compile. Each row count can also
# meet two kinds of weight (tensors made in inference mode carry one dispatch key fewer: two graphs), so the
# limit is raised to what these functions can need.
GRAPHS_PER_FUNCTION = 4 * MAX_ROWS
def _rows_product_fp32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _rows_product(x, weight)


def _rows_product_bf16(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _rows_product(x, weight)


_PER_DTYPE = {torch.float32: _rows_product_fp32, torch.bfloat16: _rows_product_bf16}


class _CompiledKernel:
    """The compiled reductions, built on first use; after a failure, `None` for good."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kernels: dict[torch.dtype, object] = {}
        self.disabled_reason: str | None = None
        if os.environ.get("HEARTH_TORCH_COMPILE", "1").strip().lower() in ("0", "false", "no", "off"):
            self.disabled_reason = "HEARTH_TORCH_COMPILE is off"

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        if self.disabled_reason is not None:
            return None
        kernel = self._kernels.get(weight.dtype)
        if kernel is None:
            with self._lock:
                from torch._dynamo import config as dynamo_config

                dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, GRAPHS_PER_FUNCTION)
                kernel = self._kernels.setdefault(
                    weight.dtype, torch.compile(_PER_DTYPE[weight.dtype], dynamic=True, fullgraph=True))
        try:
            with torch.inference_mode():  # one grad mode for every caller: no second graph per row count
                return kernel(x, weight)
        except Exception as error:  # noqa: BLE001 - any compiler failure means "use the plain path"
            self.disabled_reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
            logger.warning("Compiled CPU matrix-vector kernel unavailable, using F.linear (slower): %s",
                           self.disabled_reason)
            return None


compiled_kernel = _CompiledKernel()


def uses_compiled_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x, weight)` takes the compiled path: fp32 or bf16 on CPU, and one row, or up to
    MAX_ROWS rows for a weight at least twice as tall as wide (q/k/v, gate/up, the output projection).
    For 2-4 rows F.linear is as fast or faster on square and wide weights (o, down): measured on Gemma 3
    270M, 4 rows, down 0.21 ms against 0.32 compiled, gate/up 0.55 against 0.44."""
    n_out, width = weight.shape
    rows = x.numel() // width
    return (x.device.type == "cpu" and x.dtype in COMPILED_DTYPES and weight.dtype == x.dtype
            and (rows == 1 or (rows <= MAX_ROWS and n_out >= 2 * width))
            and compiled_kernel.disabled_reason is None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`: x (..., C), weight (N, C) -> (..., N)."""
    if uses_compiled_kernel(x, weight):
        # fresh plain tensors (not Parameters, no storage offset) so one compiled graph fits every call
        out = compiled_kernel(x.reshape(-1, x.shape[-1]).to(torch.float32, copy=True), weight.detach())
        if out is not None:
            if bias is not None:
                out = out + bias
            return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def warm_up(hidden_size: int, dtype: torch.dtype, device: torch.device | str) -> str | None:
    """Compile the kernel now (at model load) rather than on the first request; the reason it is
    unavailable, or None when it is ready or not needed."""
    if torch.device(device).type != "cpu" or dtype not in COMPILED_DTYPES:
        return None
    x = torch.zeros(1, hidden_size, dtype=dtype)
    with torch.inference_mode():
        linear(x, torch.zeros(8, hidden_size, dtype=dtype))
    return compiled_kernel.disabled_reason
