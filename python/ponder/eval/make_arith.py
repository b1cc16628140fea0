"""Generate the bundled arithmetic word problems (``datasets/arith.jsonl``).

    python -m ponder.eval.make_arith --seed 0 --n 500 --out python/ponder/eval/datasets/arith.jsonl

Each row is ``{"id", "problem", "answer", "steps"}``: ``answer`` a non-negative int, ``steps``
the number of arithmetic operations a solution needs (1 to 3). About half the problems take
one step (small sums, one-digit products: where SmolLM2-135M sometimes succeeds when
sampled), a third two steps, the rest three. The same seed and n give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_OUT = str(Path(__file__).resolve().parent / "datasets" / "arith.jsonl")

_NAMES = [("Sam", "he"), ("Lily", "she"), ("Tom", "he"), ("Ann", "she"), ("Ben", "he"),
          ("Maya", "she"), ("Leo", "he"), ("Zoe", "she"), ("Max", "he"), ("Emma", "she"),
          ("Omar", "he"), ("Nina", "she"), ("Raj", "he"), ("Mia", "she"), ("Jack", "he"),
          ("Ava", "she")]
_ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells",
          "stamps", "balloons", "crayons", "oranges"]
_CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"),
               ("pack", "packs")]
_SINGULAR = {"apples": "apple", "pencils": "pencil", "stickers": "sticker", "marbles": "marble",
             "cookies": "cookie", "books": "book", "cards": "card", "shells": "shell",
             "stamps": "stamp", "balloons": "balloon", "crayons": "crayon", "oranges": "orange"}

Template = Callable[[random.Random], tuple[str, int]]


def _people(rng: random.Random, k: int) -> list[tuple[str, str]]:
    """``k`` different people (name, pronoun)."""
    picked: list[tuple[str, str]] = []
    while len(picked) < k:
        person = rng.choice(_NAMES)
        if person not in picked:
            picked.append(person)
    return picked


# --- one step ---------------------------------------------------------------------------

def _gets_more(rng):
    (name, he), = _people(rng, 1)
    item, a, b = rng.choice(_ITEMS), rng.randint(2, 15), rng.randint(2, 12)
    return (f"{name} has {a} {item}. {he.capitalize()} gets {b} more. How many {item} does "
            f"{name} have now?", a + b)


def _adds_to_container(rng):
    (name, _), = _people(rng, 1)
    (box, _), item = rng.choice(_CONTAINERS), rng.choice(_ITEMS)
    a, b = rng.randint(2, 15), rng.randint(2, 9)
    return (f"A {box} holds {a} {item}. {name} puts in {b} more {item}. How many {item} are "
            f"in the {box} now?", a + b)


def _more_than(rng):
    (name, _), (other, _) = _people(rng, 2)
    item, a, b = rng.choice(_ITEMS), rng.randint(2, 12), rng.randint(2, 9)
    return (f"{name} has {a} {item}. {other} has {b} more {item} than {name}. How many "
            f"{item} does {other} have?", a + b)


def _gives_away(rng):
    (name, _), (other, _) = _people(rng, 2)
    item, a = rng.choice(_ITEMS), rng.randint(6, 20)
    b = rng.randint(2, a - 2)
    return (f"{name} has {a} {item} and gives {b} of them to {other}. How many {item} does "
            f"{name} have left?", a - b)


def _takes_from_table(rng):
    (name, _), = _people(rng, 1)
    item, a = rng.choice(_ITEMS), rng.randint(5, 18)
    b = rng.randint(2, a - 1)
    return (f"There are {a} {item} on the table. {name} takes {b} of them. How many {item} "
            f"are left on the table?", a - b)


def _groups_of(rng):
    (_, boxes), item = rng.choice(_CONTAINERS), rng.choice(_ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return (f"There are {a} {boxes} with {b} {item} in each. How many {item} are there in "
            f"total?", a * b)


def _each_costs(rng):
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return (f"One {_SINGULAR[item]} costs {a} dollars. How many dollars do {b} {item} "
            f"cost?", a * b)


def _every_day(rng):
    (name, he), = _people(rng, 1)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return (f"{name} reads {a} pages every day for {b} days. How many pages does {he} read in "
            f"all?", a * b)


def _times(rng):
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} times {b}?", a * b


def _shares_equally(rng):
    (name, _), = _people(rng, 1)
    item, friends, each = rng.choice(_ITEMS), rng.randint(2, 9), rng.randint(2, 9)
    return (f"{name} shares {friends * each} {item} equally among {friends} friends. How many "
            f"{item} does each friend get?", each)


# --- two steps --------------------------------------------------------------------------

def _gets_then_gives(rng):
    (name, he), (other, _) = _people(rng, 2)
    item, a, b = rng.choice(_ITEMS), rng.randint(3, 15), rng.randint(2, 10)
    c = rng.randint(2, a + b - 1)
    return (f"{name} has {a} {item}. {he.capitalize()} gets {b} more and then gives {c} to "
            f"{other}. How many {item} does {name} have now?", a + b - c)


def _groups_plus_loose(rng):
    (_, boxes), item = rng.choice(_CONTAINERS), rng.choice(_ITEMS)
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    return (f"There are {a} {boxes} with {b} {item} in each, and {c} more {item} on the shelf. "
            f"How many {item} are there altogether?", a * b + c)


def _change_from_bill(rng):
    (name, he), = _people(rng, 1)
    item, a, b = rng.choice(_ITEMS), rng.randint(2, 9), rng.randint(2, 6)
    bill = next(x for x in (10, 20, 50, 100) if x > a * b)
    return (f"One {_SINGULAR[item]} costs {a} dollars. {name} buys {b} {item} and pays with a "
            f"{bill}-dollar bill. How many dollars of change does {he} get?", bill - a * b)


def _gets_then_shares(rng):
    (name, he), = _people(rng, 1)
    item, friends, each = rng.choice(_ITEMS), rng.randint(2, 6), rng.randint(2, 6)
    total = friends * each
    b = rng.randint(1, total - 2)
    return (f"{name} has {total - b} {item} and gets {b} more. {he.capitalize()} shares them "
            f"equally among {friends} friends. How many {item} does each friend get?", each)


def _rows_taken(rng):
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    c = rng.randint(2, a * b - 1)
    return (f"A room has {a} rows of {b} chairs. {c} of the chairs are taken. How many chairs "
            f"are empty?", a * b - c)


def _times_as_many(rng):
    (name, _), (other, _) = _people(rng, 2)
    item, a, b = rng.choice(_ITEMS), rng.randint(2, 9), rng.randint(2, 4)
    return (f"{name} has {a} {item}. {other} has {b} times as many {item} as {name}. How "
            f"many {item} do they have together?", a + a * b)


def _saves_then_spends(rng):
    (name, he), = _people(rng, 1)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    c = rng.randint(2, a * b - 1)
    return (f"{name} saves {a} dollars every week. After {b} weeks {he} spends {c} dollars. "
            f"How many dollars does {name} have left?", a * b - c)


# --- three steps ------------------------------------------------------------------------

def _buys_packs_gives(rng):
    (name, he), (other, _) = _people(rng, 2)
    item, a, b, c = rng.choice(_ITEMS), rng.randint(2, 12), rng.randint(2, 5), rng.randint(2, 6)
    d = rng.randint(2, a + b * c - 1)
    return (f"{name} has {a} {item}. {he.capitalize()} buys {b} packs with {c} {item} in "
            f"each, then gives {d} {item} to {other}. How many {item} does {name} have now?",
            a + b * c - d)


def _two_days_pay(rng):
    (name, he), = _people(rng, 1)
    a, b, c, d = (rng.randint(2, 9) for _ in range(4))
    return (f"{name} earns {a} dollars an hour on Monday and works {b} hours. On Tuesday "
            f"{he} earns {c} dollars an hour and works {d} hours. How many dollars does "
            f"{name} earn on the two days?", a * b + c * d)


def _bakes_eats_shares(rng):
    (name, he), = _people(rng, 1)
    while True:
        trays, per_tray, friends = rng.randint(2, 5), rng.randint(3, 8), rng.randint(2, 5)
        each = rng.randint(1, 6)
        eaten = trays * per_tray - friends * each
        if eaten >= 2:
            break
    return (f"{name} bakes {trays} trays of {per_tray} cookies. {he.capitalize()} eats "
            f"{eaten} cookies and shares the rest equally among {friends} friends. How many "
            f"cookies does each friend get?", each)


def _shopping(rng):
    (name, he), = _people(rng, 1)
    first, second = rng.sample(_ITEMS, 2)
    a, b, c, d = (rng.randint(2, 7) for _ in range(4))
    return (f"{name} buys {a} {first} for {b} dollars each and {c} {second} for {d} dollars "
            f"each. How many dollars does {he} spend?", a * b + c * d)


def _three_changes(rng):
    (name, he), (other, _) = _people(rng, 2)
    item, a, b = rng.choice(_ITEMS), rng.randint(3, 15), rng.randint(2, 10)
    c, d = rng.randint(2, a + b - 1), rng.randint(2, 9)
    return (f"{name} has {a} {item}. {he.capitalize()} gets {b} more, gives {c} to {other}, "
            f"and then finds {d} more. How many {item} does {name} have now?", a + b - c + d)


def _change_after_two_things(rng):
    (name, he), = _people(rng, 1)
    item, a, b, c = rng.choice(_ITEMS), rng.randint(2, 6), rng.randint(2, 6), rng.randint(2, 9)
    bill = next(x for x in (10, 20, 50, 100) if x > a * b + c)
    return (f"{name} buys {a} {item} at {b} dollars each and a bag for {c} dollars, paying "
            f"with a {bill}-dollar bill. How many dollars of change does {he} get?",
            bill - (a * b + c))


TEMPLATES: dict[int, list[Template]] = {
    1: [_gets_more, _adds_to_container, _more_than, _gives_away, _takes_from_table, _groups_of,
        _each_costs, _every_day, _times, _shares_equally],
    2: [_gets_then_gives, _groups_plus_loose, _change_from_bill, _gets_then_shares, _rows_taken,
        _times_as_many, _saves_then_spends],
    3: [_buys_packs_gives, _two_days_pay, _bakes_eats_shares, _shopping, _three_changes,
        _change_after_two_things],
}


def generate(seed: int = 0, n: int = 500) -> list[dict]:
    """``n`` distinct problems: n // 2 of one step, n // 3 of two, the rest of three, in a
    seeded random order, with ids ``arith-0000``, ... by position."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = random.Random(seed)
    plan = [1] * (n // 2) + [2] * (n // 3)
    plan += [3] * (n - len(plan))
    rng.shuffle(plan)
    rows, seen = [], set()
    for i, steps in enumerate(plan):
        for _ in range(1000):
            problem, answer = rng.choice(TEMPLATES[steps])(rng)
            if problem not in seen:
                break
        else:
            raise ValueError(f"n={n} is more distinct {steps}-step problems than the "
                             "templates can make")
        seen.add(problem)
        rows.append({"id": f"arith-{i:04d}", "problem": problem, "answer": answer,
                     "steps": steps})
    return rows


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ponder.eval.make_arith", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=500, help="number of problems (default 500)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="output JSONL, '-' for stdout (default: the bundled arith.jsonl)")
    args = p.parse_args(argv)
    try:
        data = to_jsonl(generate(args.seed, args.n))
    except ValueError as e:
        p.error(str(e))
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.out).write_bytes(data)
        print(f"wrote {args.n} problems to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
