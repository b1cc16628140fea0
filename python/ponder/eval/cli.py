"""``ponder eval``: the command line of a study (``ponder.eval.study``)."""

from __future__ import annotations

import argparse
import logging
import sys

from ponder.eval.config import STRATEGIES, EvalConfig, from_yaml


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ponder eval",
        description="Accuracy against budget and against generated tokens, per search "
                    "strategy, on a dataset: resumable (rerun the same command), reports and "
                    "plots in --out, Ray scale-out with --workers/--ray.")
    p.add_argument("model", nargs="?", help="HF model directory, .gguf file or 'smollm2'")
    p.add_argument("--data", help="JSONL/JSON/CSV/Parquet file, a datasets save_to_disk "
                                  "directory, or 'arith' (the bundled arithmetic set)")
    p.add_argument("--out", help="results directory (records.jsonl, report.md/html, plots)")
    p.add_argument("--strategies", help=f"comma-separated: {','.join(STRATEGIES)}")
    p.add_argument("--budgets", help="comma-separated budgets B, e.g. 1,2,4,8,16")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument("--prm", help="process reward model (HF directory, .gguf or 'self')")
    p.add_argument("--prm-format", dest="prm_format")
    p.add_argument("--verifier", help="prm | confidence | equations | MODULE:FUNCTION "
                                      "(default: prm with --prm, else confidence)")
    p.add_argument("--limit", type=int, help="first K problems (after --shuffle-seed)")
    p.add_argument("--shuffle-seed", dest="shuffle_seed", type=int)
    p.add_argument("--question-field", dest="question_field")
    p.add_argument("--answer-field", dest="answer_field")
    p.add_argument("--id-field", dest="id_field")
    p.add_argument("--system-prompt", dest="system_prompt",
                   help="system prompt ('none' for none)")
    p.add_argument("--param", action="append", default=None, metavar="STRATEGY.FIELD=VALUE",
                   help="a strategy parameter, e.g. beam.width=2 or all.max_steps=8 "
                        "(repeatable; VALUE read as YAML)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device")
    p.add_argument("--kv-blocks", dest="kv_blocks", type=int)
    p.add_argument("--concurrency", type=int, help="searches in flight per engine (default 64)")
    p.add_argument("--workers", type=int, help="N engine actors on a local Ray")
    p.add_argument("--ray", help="address of a Ray cluster to join (e.g. auto)")
    p.add_argument("--config", help="YAML file with these options (the command line wins)")
    p.add_argument("--force", action="store_true", default=None,
                   help="write into a directory that holds another configuration's records")
    p.add_argument("--quiet", action="store_true", default=None, help="log lines, no bars")
    p.add_argument("--report", metavar="DIR", help="only redraw DIR's report from its JSONL")
    return p


def _params(items: list[str]) -> dict:
    import yaml

    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        strategy, dot, field = name.partition(".")
        if not sep or not dot or not field:
            raise ValueError(f"--param takes STRATEGY.FIELD=VALUE, got {item!r}")
        out.setdefault(strategy, {})[field] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ponder.eval import study

    try:
        if args.report:
            rows = study.redraw(args.report)
            print(f"report written to {args.report}/report.md ({len(rows)} rows)")
            return 0
        given = {k: v for k, v in vars(args).items()
                 if v is not None and k not in ("config", "report", "param")}
        if args.param:
            given["params"] = _params(args.param)
        if given.get("system_prompt") == "none":
            given["system_prompt"] = None
        if args.config:
            cfg = from_yaml(args.config, given)
        else:
            missing = [f"--{n}" if n != "model" else "MODEL" for n in ("model", "data", "out")
                       if n not in given]
            if missing:
                print(f"ponder eval: missing {', '.join(missing)}", file=sys.stderr)
                return 2
            cfg = EvalConfig(**given)
        rows = study.run(cfg)
    except (ValueError, OSError) as e:
        print(f"ponder eval: error: {e}", file=sys.stderr)
        return 2
    from ponder.eval.report import main_table

    header, body = main_table(rows)
    print("\n" + " | ".join(header))
    for line in body:
        print(" | ".join(line))
    print(f"\nreport: {cfg.out}/report.md, {cfg.out}/report.html; records: "
          f"{cfg.out}/records.jsonl")
    return 0
