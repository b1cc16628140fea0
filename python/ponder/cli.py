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
    import importlib

    return importlib.import_module(f"ponder.bench.{args.name}").main(args.rest)


def _generate(args: argparse.Namespace) -> int:
    import ponder

    eng = ponder.Engine(args.model, dtype=args.dtype, device=args.device, seed=args.seed)
    chat = not args.no_chat
    if args.beams > 1:
        beams = eng.beam_search(args.prompt, width=args.beams, max_tokens=args.max_tokens,
                                num_return=args.beams, chat=chat)
        for i, b in enumerate(beams):
            print(f"[beam {i}] score {b.score:.4f}\n{b.text}\n")
        return 0
    sampling = ponder.Sampling(max_tokens=args.max_tokens, temperature=args.temperature,
                               top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    rid = eng.add_request(args.prompt, sampling, chat=chat)
    done = False
    while not done:  # stream the text as it is generated
        for ev in eng.step():
            if ev.request_id == rid:
                sys.stdout.write(ev.text_delta)
                sys.stdout.flush()
                done = done or ev.finished
    out = eng.output(rid)
    print(f"\n[{len(out.outputs[0].token_ids)} tokens, finish: {out.outputs[0].finish_reason}]",
          file=sys.stderr)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ponder.models import gguf

    gguf.convert(args.gguf, args.out_dir)
    print(f"wrote {args.out_dir}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ponder import demo

    return demo.main(args.rest)


def _eval(args: argparse.Namespace) -> int:
    from ponder.eval import cli

    return cli.main(args.rest)


def _serve(args: argparse.Namespace) -> int:
    from ponder.serve import cli

    return cli.main(args.rest)


def _search(args: argparse.Namespace) -> int:
    import ponder

    kinds = {"bon": "BestOfN", "beam": "BeamSearch", "dvts": "DVTS", "pf": "ParticleFilter",
             "pg": "ParticleGibbs", "astar": "AStar", "mcts": "MCTS"}
    cls = getattr(ponder, kinds[args.strategy], None)
    if cls is None:
        print(f"strategy {args.strategy} is not available in this build", file=sys.stderr)
        return 2
    kwargs = dict(max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
                  max_tokens=args.budget_tokens, policy_temperature=args.temperature,
                  seed=args.seed)
    if args.strategy in ("bon", "beam", "dvts", "pf", "pg"):
        kwargs["n"] = args.n
    if args.strategy in ("beam", "dvts"):
        kwargs["width"] = args.width
    if args.strategy in ("astar", "mcts"):
        kwargs["k"] = args.width
    if args.strategy == "mcts":
        kwargs["simulations"] = args.n
    spec = cls(**kwargs)
    eng = ponder.Engine(args.model, dtype=args.dtype, device=args.device, prm=args.prm,
                        prm_format=args.prm_format)
    res = eng.search(args.question, spec)
    print(res.best.text if res.best else "")
    print(f"\n[answer: {res.answer!r}] {res.stats}", file=sys.stderr)
    if args.html:
        res.tree.to_html(args.html)
        print(f"tree page: {args.html}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="build and device information")
    p_info.set_defaults(func=_info)
    p_bench = sub.add_parser("bench", help="benchmarks (ponder bench NAME --help)",
                             add_help=False)
    p_bench.add_argument("name", help="paged_attention, decode, generate, search or prm")
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    p_bench.set_defaults(func=_bench)
    p_gen = sub.add_parser("generate", help="generate text from a prompt")
    p_gen.add_argument("model", help="HF model directory or .gguf file")
    p_gen.add_argument("prompt")
    p_gen.add_argument("--max-tokens", type=int, default=128)
    p_gen.add_argument("--temperature", type=float, default=0.0)
    p_gen.add_argument("--top-p", type=float, default=1.0)
    p_gen.add_argument("--top-k", type=int, default=0)
    p_gen.add_argument("--beams", type=int, default=1, help="beam search with N beams")
    p_gen.add_argument("--seed", type=int, default=0)
    p_gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p_gen.add_argument("--device", default="cpu")
    p_gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p_gen.set_defaults(func=_generate)
    p_demo = sub.add_parser("demo", help="test-time search on SmolLM2 (ponder demo --help)",
                            add_help=False)
    p_demo.set_defaults(func=_demo)
    p_eval = sub.add_parser("eval", help="test-time scaling study over a dataset "
                                          "(ponder eval --help)", add_help=False)
    p_eval.set_defaults(func=_eval)
    p_serve = sub.add_parser("serve", help="OpenAI-compatible server with search as a request "
                                            "parameter (ponder serve --help)", add_help=False)
    p_serve.set_defaults(func=_serve)
    p_s = sub.add_parser("search", help="search for a solution with a strategy")
    p_s.add_argument("model")
    p_s.add_argument("question")
    p_s.add_argument("--strategy", default="bon",
                     choices=["bon", "beam", "dvts", "pf", "pg", "astar", "mcts"])
    p_s.add_argument("--n", type=int, default=8)
    p_s.add_argument("--width", type=int, default=2, help="beam width, or k for astar/mcts")
    p_s.add_argument("--max-steps", type=int, default=8)
    p_s.add_argument("--max-step-tokens", type=int, default=128)
    p_s.add_argument("--budget-tokens", type=int, default=0)
    p_s.add_argument("--temperature", type=float, default=0.8)
    p_s.add_argument("--seed", type=int, default=0)
    p_s.add_argument("--html", default=None, help="write the search tree page here")
    p_s.add_argument("--prm", default=None,
                     help="process reward model (HF directory or .gguf; 'self': the policy "
                          "asked whether each step is correct); default: the policy's "
                          "confidence")
    p_s.add_argument("--prm-format", default=None,
                     choices=["qwen", "math-shepherd", "rlhflow", "skywork", "self-verify"],
                     help="how the PRM reads steps (default: from its config.json)")
    p_s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p_s.add_argument("--device", default="cpu")
    p_s.set_defaults(func=_search)
    p_conv = sub.add_parser("convert", help="write an HF model directory from a GGUF file")
    p_conv.add_argument("gguf")
    p_conv.add_argument("out_dir")
    p_conv.set_defaults(func=_convert)
    args, rest = parser.parse_known_args(argv)
    if args.func in (_demo, _eval, _serve):
        args.rest = rest  # they parse their own options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
