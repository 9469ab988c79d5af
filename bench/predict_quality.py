"""How well the transfer predictor fills in a study from a few sources (issue 16), on tables with planted structure.

Prints, as markdown tables:

1. RMSE, MAE, Spearman, sign accuracy, harm AUC and 90% interval coverage on the unmeasured
   cells, for our model and the two baselines, on generated studies (4 tasks x 11 languages x
   4 models, 12 of 44 sources measured per model covering every task and language, 2% of
   measured cells lost, seed noise 1 pp) whose truth is (a) additive, (b) additive plus
   source x target interactions, (c) as (b) with the same 12 sources for every model;
   averaged over seeds.
2. ``cross_validate`` on one table of kind (b): sources held out for every model, then per model.
3. Source choice at budgets 4, 8, 12, 20 (per model, from nothing): ``choose_sources`` against
   random choices (median of 20 draws) and a fixed strategy (one source per task in the
   best-resourced languages, in order en, zh, es, fr, de).
4. Seconds to fit and predict a 17,424-row table (9 models x 44 x 44), and a partial table's fit with one
   BLAS thread (what the library does) beside BLAS's default thread count.

    .venv/bin/python bench/predict_quality.py [--seeds 3] [--draws 20] [--only-timing]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info

from donors.analysis.predict import (
    KEYS,
    KINDS,
    Grid,
    choose_sources,
    cross_validate,
    fit_transfer_model,
    synthetic_transfer_table,
    transfer_scores,
)

SHOWN = ["rmse", "mae", "spearman", "sign_accuracy", "harm_auc", "coverage", "interval_width"]
SCENARIOS = {
    "(a) additive truth": {"interactions": 0.0},
    "(b) with interactions": {"interactions": 1.0},
    "(c) (b), same sources for every model": {"interactions": 1.0, "shared_sources": True},
}
BUDGETS = (4, 8, 12, 20)
RESOURCED = ("en", "zh", "es", "fr", "de")


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def quality(seeds: int) -> None:
    rows = []
    for name, options in SCENARIOS.items():
        for seed in range(seeds):
            study = synthetic_transfer_table(n_models=4, n_sources=12, missing=0.02, seed=seed, **options)
            for kind in KINDS:
                scores = transfer_scores(fit_transfer_model(study.results, kind=kind, seed=seed).predict(), study.truth)
                rows.append({"truth": name, "method": kind, **scores.set_index("model_name").loc["all", SHOWN]})
    table = pd.DataFrame(rows).groupby(["truth", "method"], sort=False)[SHOWN].mean().reset_index()
    additive = table[table["method"] == "additive"].set_index("truth")["rmse"]
    table["rmse_vs_additive"] = [f"{100 * (r / additive[t] - 1):+.0f}%" for t, r in zip(table["truth"], table["rmse"])]
    print(f"## 1. Unmeasured cells, 4 models x 12 of 44 sources, mean of {seeds} seeds\n")
    print(markdown(table) + "\n", flush=True)


def cross_validation() -> None:
    study = synthetic_transfer_table(n_models=4, n_sources=12, interactions=1.0, missing=0.02, seed=100)
    table = pd.concat([cross_validate(study.results, k=5, per_model=p) for p in (False, True)], ignore_index=True)
    print("## 2. cross_validate(k=5) on a table of kind (b)\n")
    print(markdown(table.round(3)) + "\n", flush=True)


def measured_table(study, chosen: set[tuple[str, str, str]]) -> pd.DataFrame:
    """The rows a study would have measured had it trained exactly ``chosen`` (model, task, language)."""
    truth = study.truth
    keys = list(zip(truth["model_name"], truth["fine_tuned_dataset"], truth["fine_tuned_language"]))
    rows = truth[[k in chosen for k in keys]]
    return rows.assign(model_size=1.0, delta_score_norm_mean=rows["delta"], delta_score_norm_se=1.0, n_seeds=3)[
        [*KEYS, "model_size", "regime", "delta_score_norm_mean", "delta_score_norm_se", "n_seeds"]
    ]


def unmeasured_scores(study, chosen) -> pd.Series:
    predicted = fit_transfer_model(measured_table(study, chosen)).predict()
    return transfer_scores(predicted, study.truth).set_index("model_name").loc["all", ["rmse", "coverage"]]


def choice(draws: int) -> None:
    study = synthetic_transfer_table(n_models=4, n_sources=None, interactions=1.0, seed=200)
    grid = Grid.of(study.truth)
    planning_grid = study.truth[["model_name", "eval_dataset", "eval_language"]]
    ours_all = choose_sources(planning_grid, max(BUDGETS))
    rng = np.random.default_rng(200)
    rows = []
    for budget in BUDGETS:
        ours = {tuple(c) for c in ours_all[: budget * len(grid.models)]}
        languages = RESOURCED[: -(-budget // len(grid.tasks))]
        fixed_cells = [(task, language) for language in languages for task in grid.tasks][:budget]
        fixed = {(model, *cell) for model in grid.models for cell in fixed_cells}
        random = [
            unmeasured_scores(
                study, {(model, *grid.cells[i]) for model in grid.models for i in rng.choice(len(grid.cells), budget, replace=False)}
            )
            for _ in range(draws)
        ]
        random = pd.DataFrame(random).median()
        for strategy, scores in (
            ("choose_sources", unmeasured_scores(study, ours)),
            (f"random (median of {draws})", random),
            ("fixed", unmeasured_scores(study, fixed)),
        ):
            rows.append({"budget per model": budget, "strategy": strategy, "rmse": scores["rmse"], "coverage": scores["coverage"]})
        print(f"budget {budget} done", flush=True)
    print("\n## 3. Choosing sources (4 models, truth with interactions, RMSE on the unmeasured cells)\n")
    print(markdown(pd.DataFrame(rows)) + "\n", flush=True)


def timing() -> None:
    study = synthetic_transfer_table(n_models=9, n_sources=None, interactions=1.0, seed=300)
    start = time.perf_counter()
    fit_transfer_model(study.results).predict()
    full = time.perf_counter() - start
    study = synthetic_transfer_table(n_models=9, n_sources=12, interactions=1.0, seed=300)
    start = time.perf_counter()
    predicted = fit_transfer_model(study.results).predict()
    partial = time.perf_counter() - start
    # The same fit with BLAS at its own thread count (the undecorated function), side by side.
    start = time.perf_counter()
    fit_transfer_model.__wrapped__(study.results).predict()
    threaded = time.perf_counter() - start
    blas = next((pool for pool in threadpool_info() if pool["user_api"] == "blas"), {"num_threads": "?"})
    print("## 4. Time to fit and predict\n")
    print(f"- 17,424 rows (9 models x 44 sources x 44 targets, all measured): {full:.1f} s")
    print(f"- 9 models x 12 of 44 sources ({len(study.results):,} rows) -> {len(predicted):,} cells: {partial:.1f} s")
    print(f"- the same with BLAS's default {blas['num_threads']} threads: {threaded:.1f} s ({threaded / partial:.1f}x the one-thread fit)")


def demo_study(source: Path) -> None:
    """Leave-one-source-out on a real study (the demo: one model, all six sources measured)."""
    from donors import api

    print(f"## 5. A real study: {source}, each source held out in turn\n")
    if not source.exists():
        print(f"(not run: {source} does not exist; `make demo` makes it)")
        return
    results = api.results_of(source)
    n_sources = len(results.dropna(subset=["fine_tuned_dataset"])[["fine_tuned_dataset", "fine_tuned_language"]].drop_duplicates())
    table = cross_validate(results, k=n_sources, per_model=True)
    columns = ["method", "model_name", "n_cells", "rmse", "mae", "spearman", "sign_accuracy", "harm_auc", "coverage"]
    print(markdown(table[columns].round(3)))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="generated tables per scenario in part 1")
    parser.add_argument("--draws", type=int, default=20, help="random choices per budget in part 3")
    parser.add_argument("--demo", type=Path, default=Path("studies/demo"), help="a finished study for part 5 (default: the demo's)")
    parser.add_argument("--only-demo", action="store_true", help="run part 5 alone")
    parser.add_argument("--only-timing", action="store_true", help="run part 4 alone")
    args = parser.parse_args()
    if args.only_timing:
        timing()
        return
    if args.only_demo:
        demo_study(args.demo)
        return
    quality(args.seeds)
    cross_validation()
    choice(args.draws)
    timing()
    demo_study(args.demo)


if __name__ == "__main__":
    main()
