"""python bench/bench_prm.py [--json]: see ponder/bench/prm.py."""

from ponder.bench.prm import main

if __name__ == "__main__":
    raise SystemExit(main())
