"""Time the item-level statistics on a full-size synthetic study of one model.

44 sources x 44 targets (4 tasks x 11 languages), 400 items per target, 3 seeds: about
2.3 million item outcomes. Times building the table's (source, target) pairs, the paired bootstrap
(1000 replicates), the paired tests with Benjamini-Hochberg, and the asymmetry pairs.

    .venv/bin/python bench/paired_speed.py [--items 400] [--seeds 3] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from donors.analysis.paired import paired_bootstrap, paired_significance, transfer_asymmetry  # noqa: E402

TASKS = ("arc_challenge", "truthfulqa", "hellaswag", "global_mmlu")
LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")


def synthetic_outcomes(n_items: int, n_seeds: int, seed: int = 0) -> pd.DataFrame:
    """Base outcomes per target; each (source, seed) flips a cell-specific share of items."""
    rng = np.random.default_rng(seed)
    cells = [(t, lang) for t in TASKS for lang in LANGUAGES]
    items = np.array([f"item{i:05d}" for i in range(n_items)])
    base = rng.random((len(cells), n_items)) < 0.5
    effect = rng.normal(0.02, 0.05, size=(len(cells), len(cells)))
    frames = []
    for j, (task, lang) in enumerate(cells):
        frames.append(
            pd.DataFrame(
                {
                    "source_task": None,
                    "source_language": None,
                    "seed": np.nan,
                    "target_task": task,
                    "target_language": lang,
                    "item_id": items,
                    "score": base[j].astype(int),
                }
            )
        )
    sources = np.repeat(np.arange(len(cells)), len(cells))
    targets = np.tile(np.arange(len(cells)), len(cells))
    for s in range(n_seeds):
        improve = rng.random((len(sources), n_items)) < np.clip(effect[sources, targets], 0, None)[:, None] + 0.05
        worsen = rng.random((len(sources), n_items)) < 0.05
        correct = np.where(improve, 1, np.where(worsen, 0, base[targets]))
        frames.append(
            pd.DataFrame(
                {
                    "source_task": np.repeat([cells[i][0] for i in sources], n_items),
                    "source_language": np.repeat([cells[i][1] for i in sources], n_items),
                    "seed": float(s),
                    "target_task": np.repeat([cells[i][0] for i in targets], n_items),
                    "target_language": np.repeat([cells[i][1] for i in targets], n_items),
                    "item_id": np.tile(items, len(sources)),
                    "score": correct.ravel(),
                }
            )
        )
    outcomes = pd.concat(frames, ignore_index=True)
    outcomes.insert(0, "model", "synthetic-1b")
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    start = time.perf_counter()
    outcomes = synthetic_outcomes(args.items, args.seeds)
    print(f"{len(outcomes):,} item outcomes built in {time.perf_counter() - start:.1f} s")
    timings = {}
    start = time.perf_counter()
    bootstrap = paired_bootstrap(outcomes, n_boot=args.n_boot, seed=0)
    intervals = bootstrap.intervals()
    timings[f"paired bootstrap ({len(intervals):,} pairs x {args.n_boot} replicates)"] = time.perf_counter() - start
    start = time.perf_counter()
    tested = paired_significance(outcomes)
    timings["paired tests + Benjamini-Hochberg"] = time.perf_counter() - start
    start = time.perf_counter()
    pairs = transfer_asymmetry(bootstrap)
    timings[f"asymmetry ({len(pairs):,} pairs)"] = time.perf_counter() - start
    for name, seconds in timings.items():
        print(f"{name:<52}{seconds:>8.2f} s")
    print(f"significant pairs: {int(tested['significant'].sum())} of {len(tested)}")


if __name__ == "__main__":
    main()
