"""python bench/bench_decode.py [--device cuda] [--json]: see ponder/bench/decode.py."""

from ponder.bench.decode import main

if __name__ == "__main__":
    raise SystemExit(main())
