"""python bench/bench_paged_attention.py [--json] [--device cuda] [--dtype bfloat16]

The same benchmark as `ponder bench paged_attention`; see ponder/bench/paged_attention.py.
"""

from ponder.bench.paged_attention import main

if __name__ == "__main__":
    raise SystemExit(main())
