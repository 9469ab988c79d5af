"""One BLAS thread for fits made of many small dense solves.

The transfer predictor and the variance decomposition solve thousands of systems of a few
hundred unknowns. Threading such a solve only adds hand-off overhead: on two busy cores the
predictor's fit ran 12x slower with OpenBLAS's default threads than with one.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

one_blas_thread = threadpool_limits.wrap(limits=1, user_api="blas")
"""Decorator: BLAS keeps one thread while the function runs, and gets its own setting back after."""
