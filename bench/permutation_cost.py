"""What permutation evaluation costs against a single pass: the same items, side by side.

    .venv/bin/python bench/permutation_cost.py [--model smollm2-135m] [--items 40] [--repeats 3]

Scores gold-balanced test items of the embedded tasks in the lettered format once
(``eval.permutations: none``) and under every cyclic rotation (``cyclic``), alternating
the two ways ``--repeats`` times on one loaded model, and prints the best time of each, the
ratio, and what the rotations show (accuracy under rotation 0 against the mean and
all-rotations accuracy). Ratios, not seconds, are what carry across machines.
"""

from __future__ import annotations

import argparse
import time

import torch

from donors.config import EvalConfig
from donors.evaluate import get_scorer
from donors.grid import Cell
from donors.models import load_model
from donors.tasks.data import balanced_ids
from donors.tasks.registry import get_task

TASKS = ("number_words", "cldr_continent", "cldr_currency")
LANGUAGES = ("en", "de")


def targets(n_items: int) -> dict[Cell, list]:
    out = {}
    for task in TASKS:
        for language in LANGUAGES:
            items = get_task(task).load(language, "test")
            keep = set(balanced_ids(items, n_items))
            out[Cell(task, language)] = [item for item in items if item.id in keep]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=40, help="items per target")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.items < 4 or args.repeats < 1:
        parser.error("--items needs at least 4 (one per option) and --repeats at least 1")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    work = targets(args.items)
    n_items = sum(len(v) for v in work.values())
    scorers = {
        way: get_scorer(EvalConfig(prompt_format="lettered", chat_template=False, batch_size=16, permutations=way))
        for way in ("none", "cyclic")
    }
    best = {way: float("inf") for way in scorers}
    results = {}
    for _ in range(args.repeats):
        for way, scorer in scorers.items():
            start = time.perf_counter()
            results[way] = scorer.score(model, tokenizer, work, model_name=args.model)
            best[way] = min(best[way], time.perf_counter() - start)
    print(
        f"{args.model}, lettered, {len(work)} targets x {args.items} items = {n_items} items, {args.threads} thread(s), best of {args.repeats}"
    )
    for way, seconds in best.items():
        print(
            f"  permutations {way:<7} {seconds:7.1f} s  {n_items / seconds:6.1f} items/s  ({seconds / best['none']:.2f}x the single pass)"
        )
    rotated = [p for r in results["cyclic"].values() for p in r.predictions + r.rotations]
    first = [p for r in results["cyclic"].values() for p in r.predictions]
    by_item: dict[tuple, list[bool]] = {}
    for p in rotated:
        by_item.setdefault((p.target_task, p.target_language, p.item_id), []).append(p.predicted == p.gold)
    print(
        f"  accuracy: rotation 0 {sum(p.predicted == p.gold for p in first) / len(first):.3f}, "
        f"mean over rotations {sum(sum(v) / len(v) for v in by_item.values()) / len(by_item):.3f}, "
        f"right under every rotation {sum(all(v) for v in by_item.values()) / len(by_item):.3f}"
    )


if __name__ == "__main__":
    main()
