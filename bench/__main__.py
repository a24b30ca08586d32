"""`make bench`: every benchmark in turn (python -m bench [name ...]); one name may take that benchmark's own
options after it (python -m bench torch --rounds 5)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "llamacpp": "bench.llamacpp_stack",
    "torch": "bench.torch_engine",
    "concurrency": "bench.concurrency",
}


def main(args: list[str]) -> None:
    if args and args[0] in BENCHMARKS and any(arg.startswith("-") for arg in args[1:]):
        runs = [(args[0], args[1:])]  # one benchmark with its own options
    else:
        runs = [(name, []) for name in args or list(BENCHMARKS)]
    for name, options in runs:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        print(f"== {name}", flush=True)
        sys.argv = [name, *options]  # each benchmark parses its own options
        importlib.import_module(BENCHMARKS[name]).main()


if __name__ == "__main__":
    main(sys.argv[1:])
