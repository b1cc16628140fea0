"""The ``ponder`` command line."""

from __future__ import annotations

import argparse
import sys


def _info(_args: argparse.Namespace) -> int:
    import torch

    import ponder
    from ponder import _core

    print(f"ponder {ponder.__version__} (torch {torch.__version__})")
    print(f"CPU kernel threads: {_core.get_num_threads()}")
    print(f"CUDA kernels built: {_core.cuda_built()}; devices visible: {_core.cuda_device_count()}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ponder.bench import BENCHMARKS

    if args.name not in BENCHMARKS:
        print(f"unknown benchmark {args.name!r}; choose from {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    from ponder.bench import paged_attention

    return paged_attention.main(args.rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="build and device information")
    p_info.set_defaults(func=_info)
    p_bench = sub.add_parser("bench", help="kernel microbenchmarks (ponder bench NAME --help)",
                             add_help=False)
    p_bench.add_argument("name", help="paged_attention")
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    p_bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
