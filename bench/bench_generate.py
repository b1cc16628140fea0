"""python bench/bench_generate.py [--json]: see ponder/bench/generate.py."""

from ponder.bench.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
