"""The command line, end to end on SmolLM2 (small settings)."""

import json
import os
import re

from ponder import cli, demo


def test_info(capsys):
    assert cli.main(["info"]) == 0
    assert "CUDA kernels built" in capsys.readouterr().out


def test_bench_paged_attention_json(capsys):
    assert cli.main(["bench", "paged_attention", "--quick", "--budget", "0.01", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 3 and all(r["ponder_us"] > 0 and r["ratio"] > 0 for r in rows)


def test_bench_names_every_benchmark(capsys):
    import importlib

    from ponder.bench import BENCHMARKS

    assert all(callable(importlib.import_module(f"ponder.bench.{n}").main) for n in BENCHMARKS)
    assert cli.main(["bench", "nonsense"]) == 2
    assert "decode" in capsys.readouterr().err


def test_generate_streams_text(smollm2_gguf, capsys):
    assert cli.main(["generate", smollm2_gguf, "What is 2+2?", "--max-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "8 tokens" in out.err


def test_generate_beams(smollm2_gguf, capsys):
    assert cli.main(["generate", smollm2_gguf, "Hi", "--max-tokens", "4", "--beams", "2"]) == 0
    assert capsys.readouterr().out.count("[beam ") == 2


def test_search_writes_a_tree_page(smollm2_gguf, tmp_path, capsys):
    page = tmp_path / "t.html"
    assert cli.main(["search", smollm2_gguf, "What is 3 times 4?", "--strategy", "pf", "--n",
                     "2", "--max-steps", "2", "--max-step-tokens", "8", "--html",
                     str(page)]) == 0
    assert "answer:" in capsys.readouterr().err and page.read_text().startswith("<!doctype")


def test_demo_small(smollm2_gguf, capsys, tmp_path):
    page = tmp_path / "demo.html"
    assert cli.main(["demo", "--problems", "1", "--n", "2", "--html", str(page), "--model",
                     smollm2_gguf]) == 0
    out, err = capsys.readouterr()
    assert "particle filter" in err and "accuracy=" in err  # the progress bars
    assert "does not know the answers" in out
    # One table line per run: name, correct/total, tokens, seconds, tok/s.
    table = {m[1] for m in re.finditer(r"^(.+?) +[01]/1 +\d+ +[\d.]+ +[\d.]+$", out, re.M)}
    assert table == {"greedy", "best-of-n", "beam search", "particle filter",
                     "PF + PRM (self-verify)", demo.ORACLE}
    assert page.read_text().startswith("<!doctype")
    plot = tmp_path / "ponder-demo-tokens"  # beside the tree page
    for ext in ("png", "svg"):
        assert os.path.getsize(f"{plot}.{ext}") > 0 and f"{plot}.{ext}" in out
