"""`make bench`: every benchmark in turn (python -m bench [name ...])."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "llamacpp": "bench.llamacpp_stack",
    "torch": "bench.torch_engine",
}


def main(names: list[str]) -> None:
    for name in names or list(BENCHMARKS):
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        print(f"== {name}", flush=True)
        sys.argv = [name]  # each benchmark parses its own (default) options
        importlib.import_module(BENCHMARKS[name]).main()


if __name__ == "__main__":
    main(sys.argv[1:])
