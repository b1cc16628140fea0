"""python bench/bench_search.py [--json]: see ponder/bench/search.py."""

from ponder.bench.search import main

if __name__ == "__main__":
    raise SystemExit(main())
