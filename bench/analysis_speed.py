"""Time the published analyses (A1-A16) on a full-size synthetic results table.

Builds the 9 models x 44 sources x 44 targets = 17,424-row grid of the published study
with planted effects, times every table of ``published_analyses()`` on its own (the
MixedLM fits and the first lang2vec import included), then one whole
``run_published_analyses`` call, and prints seconds.

    .venv/bin/python bench/analysis_speed.py [--blas-threads N] [--seed S]

The A15 fits are thousands of small dense solves, which run fastest on one BLAS thread:
with threadpoolctl installed each fit limits itself; otherwise ``--blas-threads 1``
caps OpenBLAS/OpenMP threads before numpy loads.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas-threads", type=int, default=None, help="cap BLAS threads (default: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.blas_threads is not None:
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(args.blas_threads)

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from synthetic import results_table

    from donors.analysis import published_analyses, run_published_analyses

    table = results_table(regime_effects={"MT-ML": 2.0, "MT-CL": 1.2, "CT-ML": 0.8}, seed=args.seed)
    threadpoolctl = importlib.util.find_spec("threadpoolctl") is not None
    print(
        f"{len(table):,} rows; {os.cpu_count()} CPUs; BLAS threads: "
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}; threadpoolctl (one BLAS thread "
        f"per MixedLM fit): {'yes' if threadpoolctl else 'not installed'}"
    )
    print(f"{'table':<42}{'seconds':>9}")
    timings = {}
    for name, analysis in published_analyses().items():
        start = time.perf_counter()
        analysis(table)
        timings[name] = time.perf_counter() - start
        print(f"{name:<42}{timings[name]:>9.2f}", flush=True)
    start = time.perf_counter()
    run_published_analyses(table)
    total = time.perf_counter() - start
    print(f"{'sum of the tables above':<42}{sum(timings.values()):>9.2f}")
    print(f"{'run_published_analyses (one call)':<42}{total:>9.2f}")
    print(f"target: < {TARGET_SECONDS:.0f} s -> {'met' if total < TARGET_SECONDS else 'MISSED'}")


if __name__ == "__main__":
    main()
