"""Predict a whole transfer matrix from a few measured sources (issue 16).

A transfer study measures Δ(model, source, target) for every target of each trained source.
Training is the expensive part, so a practitioner measures a few sources and wants the rest
of the matrix, with honest uncertainty. This module fits the structure a transfer study has
and predicts every unmeasured (model, source, target) cell; it is pure (pandas, numpy,
scipy) and knows nothing of stores, models or reports.

The model (``kind="transfer"``), Δ in percentage points::

    Δ(m, s, t) = a[m, regime]                          model x regime
               + b[task(s)] + c[lang(s)] + d[t]        donor task, donor language, recipient
               + e[s] + f[task(s), task(t)] + g[lang(s), lang(t)]
               + model-specific e, b, c, d and f       (shrunk towards the shared ones)
               + u(s) . v(t)                           low-rank source x target interaction
               + noise,   u(s) = U_task[task(s)] + U_lang[lang(s)] + U_cell[s]

The first line and the donor/recipient main effects are the ``additive`` baseline, fitted
by (nearly) plain least squares; every other linear term has a ridge penalty, chosen with
the rank of ``u . v`` by inner cross-validation over held-out sources. A source never
measured has no e[s] or U_cell[s] of its own (they shrink to 0), so it borrows from sources
that share its task or its language: the only way an unmeasured row can be predicted.

Intervals are split conformal: the out-of-fold residuals of the inner cross-validation,
grouped by model, regime and how much is known of the source (measured for another model,
only its task and language measured, or not even those), give the 5% and 95% quantiles that
are added to a prediction, and ``p_harm`` is the share of those residuals that would put
the cell at Δ <= -1 pp.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import linalg, sparse, stats

from donors.analysis.blas import one_blas_thread
from donors.analysis.constants import (
    DELTA,
    HARM_THRESHOLD,
    MODEL,
    SIZE,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    TARGET_LANGUAGE,
    TARGET_TASK,
)
from donors.analysis.results import ResultsTableError, has_source, load_results_table
from donors.errors import DonorsError, InsufficientData
from donors.grid import Cell, cells_matching

KEYS = [MODEL, SOURCE_TASK, SOURCE_LANGUAGE, TARGET_TASK, TARGET_LANGUAGE]
PREDICTION_COLUMNS = [*KEYS, "regime", "delta_pred", "delta_lo", "delta_hi", "p_harm", "measured"]
DELTA_SE = "delta_score_norm_se"

LEVEL = 0.90
"""Coverage the predictive intervals aim at: [delta_lo, delta_hi] holds 90% of the cells."""
MIN_SOURCES_PER_MODEL = 3
"""Fewer measured sources for a model, and no source can be held out to calibrate its intervals."""
KINDS = ("transfer", "additive", "regime_mean")
"""Our model, and the two baselines of issue 16, fitted and calibrated the same way."""
RIDGES = (0.3, 3.0, 30.0, 300.0)
"""Candidate penalties of the interaction terms (prior sd of a term ~ noise sd / sqrt(ridge))."""
RANKS = (0, 1, 2, 3)
"""Candidate ranks of the source x target factor term."""
MAIN_RIDGE = 1e-6
"""Penalty of the additive terms: only there to make the collinear one-hot columns solvable."""
FACTOR_RIDGE = 0.3
CELL_LOADING_RIDGE = 10.0
FACTOR_ITERATIONS = 8
BACKFIT_ROUNDS = 6
MIN_CALIBRATION = 40
"""Fewest residuals a calibration group needs before a coarser group is used instead."""

REGIME_BY_SAMENESS = np.array(["CT-CL", "CT-ML", "MT-CL", "MT-ML"], dtype=object)
"""Regime label indexed by 2 x same task + same language (donors.grid)."""
SEEN, UNSEEN, EXTRAPOLATED = "seen", "unseen", "extrapolated"
STATUSES = (SEEN, UNSEEN, EXTRAPOLATED)
"""What is known of an unmeasured (model, source): measured for another model; only its task and
language among measured sources; its task or language never a measured source."""


class NoMatchingTargets(DonorsError, ValueError):
    """A target pattern of ``recommend_sources`` matches no target of the table."""


class SourceChoice(NamedTuple):
    """A source to train: for ``model``, or for every model when ``model`` is None."""

    model: str | None
    task: str
    language: str


# --- the grid ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """Models x cells x cells: the sources of the grid are the (task, language) cells that appear as targets."""

    models: tuple[str, ...]
    cells: tuple[tuple[str, str], ...]

    @functools.cached_property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted({task for task, _ in self.cells}))

    @functools.cached_property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({language for _, language in self.cells}))

    @functools.cached_property
    def cell_task(self) -> np.ndarray:
        return np.array([self.tasks.index(task) for task, _ in self.cells])

    @functools.cached_property
    def cell_language(self) -> np.ndarray:
        return np.array([self.languages.index(language) for _, language in self.cells])

    @classmethod
    def of(cls, frame: pd.DataFrame) -> "Grid":
        models = tuple(sorted(frame[MODEL].astype(str).unique()))
        cells = frame[[TARGET_TASK, TARGET_LANGUAGE]].astype(str).drop_duplicates()
        return cls(models, tuple(sorted(map(tuple, cells.to_numpy()))))

    def codes(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(model, source, target) indices of each row; a name outside the grid is a DonorsError."""
        model = _codes(frame[MODEL].astype(str), self.models, "model")
        cells = [f"{task}/{language}" for task, language in self.cells]
        source = _codes(frame[SOURCE_TASK].astype(str) + "/" + frame[SOURCE_LANGUAGE].astype(str), cells, "source")
        target = _codes(frame[TARGET_TASK].astype(str) + "/" + frame[TARGET_LANGUAGE].astype(str), cells, "target")
        return model, source, target

    def regime(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        task, language = self.cell_task, self.cell_language
        return 2 * (task[source] == task[target]) + (language[source] == language[target])

    def frame(self) -> pd.DataFrame:
        """Every (model, source, target) of the grid, in the order of its indices."""
        m, s, t = np.meshgrid(np.arange(len(self.models)), np.arange(len(self.cells)), np.arange(len(self.cells)), indexing="ij")
        m, s, t = m.ravel(), s.ravel(), t.ravel()
        cells = np.array(self.cells, dtype=object)
        return pd.DataFrame(
            {
                MODEL: np.array(self.models, dtype=object)[m],
                SOURCE_TASK: cells[s, 0],
                SOURCE_LANGUAGE: cells[s, 1],
                TARGET_TASK: cells[t, 0],
                TARGET_LANGUAGE: cells[t, 1],
                "regime": REGIME_BY_SAMENESS[self.regime(s, t)],
            }
        )


def _codes(values: pd.Series, names: Sequence[str], what: str) -> np.ndarray:
    codes = pd.Categorical(values, categories=list(names)).codes
    if (codes < 0).any():
        unknown = sorted(set(values[codes < 0]))
        raise DonorsError(f"{what} {', '.join(unknown[:5])} is not in the grid; the grid has {', '.join(names)}")
    return np.asarray(codes, dtype=int)


# --- preparing a results table ----------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """The measured rows of a results table as indices into its grid."""

    grid: Grid
    model: np.ndarray
    source: np.ndarray
    target: np.ndarray
    delta: np.ndarray
    se: np.ndarray

    @property
    def measured(self) -> np.ndarray:
        """(models, cells) bool: the sources measured for each model."""
        out = np.zeros((len(self.grid.models), len(self.grid.cells)), dtype=bool)
        out[self.model, self.source] = True
        return out

    def subset(self, rows: np.ndarray) -> "_Data":
        return _Data(self.grid, self.model[rows], self.source[rows], self.target[rows], self.delta[rows], self.se[rows])


def _prepare(results, grid: Grid | None = None) -> _Data:
    """Check a results table and keep its measured rows; a source that is not a target of the grid is refused."""
    frame = load_results_table(results)
    frame = frame[has_source(frame)]
    if frame.duplicated(KEYS).any():
        first = frame[frame.duplicated(KEYS, keep=False)][KEYS].iloc[0]
        raise ResultsTableError(
            f"the results table has several rows for {'/'.join(map(str, first))}; give one row per (model, source, target)"
        )
    grid = grid or Grid.of(frame)
    cells = {f"{task}/{language}" for task, language in grid.cells}
    source = frame[SOURCE_TASK].astype(str) + "/" + frame[SOURCE_LANGUAGE].astype(str)
    outside = sorted(set(source[~source.isin(cells)]))
    if outside:
        raise ResultsTableError(
            f"source(s) {', '.join(outside[:5])}{', ...' if len(outside) > 5 else ''} are never a target of the table, so they "
            "have no place in its transfer matrix (the grid's sources are its targets); drop their rows, or score them as targets"
        )
    frame = frame[frame[DELTA].notna().to_numpy()]
    model, source, target = grid.codes(frame)
    se = pd.to_numeric(frame[DELTA_SE], errors="coerce").to_numpy(float) if DELTA_SE in frame else np.full(len(frame), np.nan)
    data = _Data(grid, model, source, target, frame[DELTA].to_numpy(float), se)
    _check_enough(data)
    return data


def _check_enough(data: _Data) -> None:
    if not len(data.delta):
        raise InsufficientData(
            "no (source, target) cell with a Δ is measured yet, so there is nothing to fit a transfer model to: "
            f"train and score at least {MIN_SOURCES_PER_MODEL} sources per model first (`donors run`)"
        )
    counts = data.measured.sum(axis=1)
    short = [f"{name} ({n})" for name, n in zip(data.grid.models, counts) if n < MIN_SOURCES_PER_MODEL]
    if short:
        raise InsufficientData(
            f"too few measured sources to fit a transfer model: {', '.join(short)}; "
            f"each model needs at least {MIN_SOURCES_PER_MODEL} measured sources (each with its targets scored)"
        )


def _status(grid: Grid, measured: np.ndarray, model: np.ndarray, source: np.ndarray) -> np.ndarray:
    """SEEN/UNSEEN/EXTRAPOLATED of each (model, source) given which sources are measured (indices into STATUSES)."""
    anywhere = measured.any(axis=0)
    task_known = np.zeros(len(grid.tasks), dtype=bool)
    language_known = np.zeros(len(grid.languages), dtype=bool)
    task_known[grid.cell_task[anywhere]] = True
    language_known[grid.cell_language[anywhere]] = True
    covered = task_known[grid.cell_task[source]] & language_known[grid.cell_language[source]]
    return np.where(anywhere[source], 0, np.where(covered, 1, 2))


# --- the linear part ------------------------------------------------------------------------


def _blocks(kind: str, grid: Grid, m: np.ndarray, s: np.ndarray, t: np.ndarray) -> list[tuple[np.ndarray, int, bool]]:
    """(column within the block, block size, penalised) for each term of the linear part."""
    n_models, n_cells, n_tasks, n_languages = len(grid.models), len(grid.cells), len(grid.tasks), len(grid.languages)
    task, language = grid.cell_task, grid.cell_language
    blocks = [(4 * m + grid.regime(s, t), 4 * n_models, False)]
    if kind == "regime_mean":
        return blocks
    blocks += [(task[s], n_tasks, False), (language[s], n_languages, False), (t, n_cells, False)]
    if kind == "additive":
        return blocks
    return blocks + [
        (s, n_cells, True),
        (task[s] * n_tasks + task[t], n_tasks**2, True),
        (language[s] * n_languages + language[t], n_languages**2, True),
        (m * n_tasks + task[s], n_models * n_tasks, True),
        (m * n_languages + language[s], n_models * n_languages, True),
        (m * n_cells + s, n_models * n_cells, True),
        (m * n_cells + t, n_models * n_cells, True),
        (m * n_tasks**2 + task[s] * n_tasks + task[t], n_models * n_tasks**2, True),
    ]


def _design(kind: str, grid: Grid, m, s, t) -> tuple[sparse.csr_matrix, np.ndarray]:
    """One-hot design of the linear part and which of its columns are penalised."""
    blocks = _blocks(kind, grid, m, s, t)
    offsets = np.cumsum([0] + [size for _, size, _ in blocks])
    columns = np.column_stack([index + offset for (index, _, _), offset in zip(blocks, offsets)])
    n, width = columns.shape
    design = sparse.csr_matrix((np.ones(n * width), columns.ravel(), np.arange(0, n * width + 1, width)), shape=(n, offsets[-1]))
    penalised = np.concatenate([np.full(size, flag) for _, size, flag in blocks])
    return design, penalised


def _ridge(gram: np.ndarray, penalised: np.ndarray, ridge: float):
    """Cholesky factor of the penalised normal equations, to solve for several right-hand sides."""
    return linalg.cho_factor(gram + np.diag(np.where(penalised, ridge, MAIN_RIDGE)))


# --- the low-rank part ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Factors:
    """u(s) . v(t): source loadings built from task, language and cell parts; free target loadings."""

    source: np.ndarray  # (cells, rank)
    target: np.ndarray  # (cells, rank)

    def __call__(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", self.source[s], self.target[t])


def _outer(loadings: np.ndarray) -> np.ndarray:
    """Each row's outer product with itself, flattened: (n, rank * rank)."""
    return (loadings[:, :, None] * loadings[:, None, :]).reshape(len(loadings), -1)


def _fit_factors(grid: Grid, s: np.ndarray, t: np.ndarray, residual: np.ndarray, rank: int, start: _Factors | None = None) -> _Factors:
    """Alternating ridge least squares of the residuals' source x target means, weighted by their counts.

    Shared across models: with a few sources per model, only the pooled residuals say
    anything about interactions, and a source measured for one model informs the others.
    """
    n_cells = len(grid.cells)
    if rank == 0:
        return _Factors(np.zeros((n_cells, 0)), np.zeros((n_cells, 0)))
    count = np.bincount(s * n_cells + t, minlength=n_cells**2).reshape(n_cells, n_cells).astype(float)
    total = np.bincount(s * n_cells + t, weights=residual, minlength=n_cells**2).reshape(n_cells, n_cells)
    # z(s): indicator of the source's task, language and cell; u(s) = z(s) @ W.
    z = np.hstack([np.eye(len(grid.tasks))[grid.cell_task], np.eye(len(grid.languages))[grid.cell_language], np.eye(n_cells)])
    width = z.shape[1]
    # A source's own loading is penalised harder than its task's and language's: only those
    # carry over to a source never measured, so they should explain what they can.
    penalty = np.concatenate([np.full(width - n_cells, FACTOR_RIDGE), np.full(n_cells, CELL_LOADING_RIDGE)])
    if start is None:
        _, values, right = np.linalg.svd(total / np.maximum(count, 1))
        target = right[:rank].T * np.sqrt(values[:rank])
    else:
        target = start.target
    eye = np.eye(rank)
    for _ in range(FACTOR_ITERATIONS):
        gram = (count @ _outer(target)).reshape(n_cells, rank * rank)
        # sum over s of (z(s) z(s)^T) kron gram(s), as one product.
        lhs = (z.T @ (z[:, :, None] * gram[:, None, :]).reshape(n_cells, -1)).reshape(width, width, rank, rank)
        lhs = lhs.transpose(0, 2, 1, 3).reshape(width * rank, width * rank)
        rhs = (z.T @ (total @ target)).ravel()
        loadings = linalg.solve(lhs + np.diag(np.repeat(penalty, rank)), rhs, assume_a="pos").reshape(width, rank)
        source = z @ loadings
        gram = (count.T @ _outer(source)).reshape(n_cells, rank, rank) + FACTOR_RIDGE * eye
        target = np.linalg.solve(gram, (total.T @ source)[..., None])[..., 0]
    return _Factors(source, target)


# --- fitting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    """The point predictor: linear coefficients and factors."""

    kind: str
    grid: Grid
    beta: np.ndarray
    factors: _Factors

    def __call__(self, m, s, t) -> np.ndarray:
        design, _ = _design(self.kind, self.grid, m, s, t)
        return design @ self.beta + self.factors(s, t)


def _fit_candidates(kind: str, data: _Data, ridges: Sequence[float], ranks: Sequence[int]) -> dict[tuple[float, int], _Fit]:
    design, penalised = _design(kind, data.grid, data.model, data.source, data.target)
    gram = (design.T @ design).toarray()
    moment = design.T @ data.delta
    fits = {}
    for ridge in ridges:
        cholesky = _ridge(gram, penalised, ridge)
        linear = linalg.cho_solve(cholesky, moment)
        for rank in ranks:
            # Backfitting: the linear part fitted beside the interaction, not before it, so that
            # it does not soak up the part of u . v that an unbalanced design projects onto it.
            beta, factors = linear, None
            for _ in range(BACKFIT_ROUNDS if rank else 1):
                factors = _fit_factors(data.grid, data.source, data.target, data.delta - design @ beta, rank, factors)
                beta = linalg.cho_solve(cholesky, design.T @ (data.delta - factors(data.source, data.target)))
            fits[ridge, rank] = _Fit(kind, data.grid, beta, factors)
    return fits


def _folds(data: _Data, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Held-out row masks: K folds over sources (held out for every model), then K over (model, source) pairs.

    The first kind calibrates sources never measured; the second, sources measured for
    another model, which is how most unmeasured cells look when models train different sources.
    """
    folds = []
    sources = rng.permutation(np.unique(data.source))
    for group in np.array_split(sources, min(k, len(sources))):
        folds.append(np.isin(data.source, group))
    measured = data.measured
    shared = np.flatnonzero(measured.sum(axis=0) >= 2)
    pairs = np.argwhere(measured[:, shared])
    if len(data.grid.models) > 1 and len(pairs) >= k:
        pairs = rng.permutation(np.column_stack([pairs[:, 0], shared[pairs[:, 1]]]))
        pair_code = data.model * len(data.grid.cells) + data.source
        for group in np.array_split(pairs, k):
            folds.append(np.isin(pair_code, group[:, 0] * len(data.grid.cells) + group[:, 1]))
    return folds


@dataclass(frozen=True)
class _Calibration:
    """Out-of-fold residuals (measured - predicted) labelled by model, regime and status."""

    model: np.ndarray
    regime: np.ndarray
    status: np.ndarray
    residual: np.ndarray

    def groups(self, model: int, regime: int, status: int) -> np.ndarray:
        """Residuals of the finest group with enough of them.

        (model, regime, status), then (regime, status), then status; a status with too few
        held-out sources borrows from the next better-known one, which understates its spread.
        """
        for known in range(status, -1, -1):
            for mask in (
                (self.model == model) & (self.regime == regime) & (self.status == known),
                (self.regime == regime) & (self.status == known),
                self.status == known,
            ):
                if mask.sum() >= MIN_CALIBRATION:
                    return np.sort(self.residual[mask])
        return np.sort(self.residual)

    def interval(self, model, regime, status, prediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictive interval and P(Δ <= -1 pp) of each prediction, from its group's residuals."""
        lo, hi, harm = (np.empty(len(prediction)) for _ in range(3))
        keys = np.column_stack([model, regime, status])
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        for index, (m, r, st) in enumerate(unique):
            rows = inverse.ravel() == index
            residuals = self.groups(m, r, st)
            low, high = np.quantile(residuals, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
            lo[rows], hi[rows] = prediction[rows] + low, prediction[rows] + high
            harm[rows] = np.searchsorted(residuals, HARM_THRESHOLD - prediction[rows], side="right") / len(residuals)
        return lo, hi, harm


@dataclass(frozen=True)
class TransferModel:
    """A fitted transfer model: predicts any (model, source, target) cell of its grid with a 90% interval.

    ``ridge`` and ``rank`` are the penalty of the interaction terms and the rank of the
    source x target factor term chosen by inner cross-validation; ``selection`` holds the
    held-out mean squared error of every candidate, per status of the held-out source.
    """

    kind: str
    grid: Grid
    ridge: float
    rank: int
    selection: pd.DataFrame
    _fit: _Fit = field(repr=False)
    _calibration: _Calibration = field(repr=False)
    _data: _Data = field(repr=False)

    def predict(self, cells: pd.DataFrame | None = None) -> pd.DataFrame:
        """Prediction columns for the given key rows (default: the whole grid).

        Measured cells keep their measured Δ, with a normal 90% interval from its seed
        standard error when the table has one (a point otherwise).
        """
        frame = self.grid.frame() if cells is None else cells[KEYS].reset_index(drop=True)
        m, s, t = self.grid.codes(frame)
        data = self._data
        prediction = self._fit(m, s, t)
        measured_sources = data.measured
        status = _status(self.grid, measured_sources, m, s)
        # A missing cell of a measured source is calibrated as a source measured elsewhere.
        status = np.where(measured_sources[m, s], 0, status)
        regime = self.grid.regime(s, t)
        lo, hi, harm = self._calibration.interval(m, regime, status, prediction)
        n_cells = len(self.grid.cells)
        code = (m * n_cells + s) * n_cells + t
        known = pd.Series(np.arange(len(data.delta)), index=(data.model * n_cells + data.source) * n_cells + data.target)
        row = known.reindex(code).to_numpy()
        measured = ~np.isnan(row)
        row = row[measured].astype(int)
        delta, se = data.delta[row], data.se[row]
        se = np.where(np.isfinite(se), se, 0.0)
        z = stats.norm.ppf((1 + LEVEL) / 2)
        prediction[measured], lo[measured], hi[measured] = delta, delta - z * se, delta + z * se
        with np.errstate(divide="ignore", invalid="ignore"):
            harm[measured] = np.where(se > 0, stats.norm.cdf((HARM_THRESHOLD - delta) / se), (delta <= HARM_THRESHOLD).astype(float))
        out = frame.assign(
            regime=REGIME_BY_SAMENESS[regime], delta_pred=prediction, delta_lo=lo, delta_hi=hi, p_harm=harm, measured=measured
        )
        return out[PREDICTION_COLUMNS]


@one_blas_thread
def fit_transfer_model(
    results,
    *,
    kind: str = "transfer",
    ridge: float | None = None,
    rank: int | None = None,
    folds: int = 5,
    seed: int = 0,
) -> TransferModel:
    """Fit a transfer model to the measured cells of a results table (a DataFrame or CSV in the published schema).

    ``kind`` is ``"transfer"`` (ours) or one of the baselines ``"additive"`` (model x regime +
    source task + source language + target) and ``"regime_mean"`` (model x regime). ``ridge``
    and ``rank`` fix what the inner cross-validation (``folds`` folds over sources and as
    many over (model, source) pairs) would otherwise choose; the same folds' out-of-fold
    residuals calibrate the intervals. Raises InsufficientData when a model has fewer than
    :data:`MIN_SOURCES_PER_MODEL` measured sources.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    data = _prepare(results)
    grid = data.grid
    n_sources = len(np.unique(data.source))
    ridges = RIDGES if ridge is None and kind == "transfer" else (ridge or RIDGES[0],)
    ranks = [r for r in RANKS if r < n_sources - 1] if rank is None and kind == "transfer" else ((rank or 0) if kind == "transfer" else 0,)
    rng = np.random.default_rng(seed)
    candidates = [(r, k) for r in ridges for k in ranks]
    residuals = {c: [] for c in candidates}
    labels = []
    for held_out in _folds(data, folds, rng):
        train, test = data.subset(~held_out), data.subset(held_out)
        fits = _fit_candidates(kind, train, ridges, ranks)
        status = _status(grid, train.measured, test.model, test.source)
        labels.append(np.column_stack([test.model, grid.regime(test.source, test.target), status]))
        for candidate, fit in fits.items():
            residuals[candidate].append(test.delta - fit(test.model, test.source, test.target))
    labels = np.vstack(labels)
    residuals = {c: np.concatenate(r) for c, r in residuals.items()}
    # Weigh each status's held-out error by its share of the cells this fit will predict.
    todo = ~data.measured
    todo_m, todo_s = np.nonzero(todo)
    share = np.bincount(_status(grid, data.measured, todo_m, todo_s), minlength=3).astype(float)
    share = share if share.sum() else np.ones(3)
    rows = []
    for candidate, residual in residuals.items():
        mse = [np.mean(residual[labels[:, 2] == i] ** 2) if (labels[:, 2] == i).any() else np.nan for i in range(3)]
        weights = np.where(np.isnan(mse), 0.0, share)
        score = np.nansum(np.array(mse) * weights) / weights.sum() if weights.sum() else np.nanmean(mse)
        rows.append({"ridge": candidate[0], "rank": candidate[1], **{f"mse_{name}": v for name, v in zip(STATUSES, mse)}, "score": score})
    selection = pd.DataFrame(rows)
    best = selection.loc[selection["score"].idxmin()]
    chosen = (float(best["ridge"]), int(best["rank"]))
    calibration = _Calibration(labels[:, 0], labels[:, 1], labels[:, 2], residuals[chosen])
    final = _fit_candidates(kind, data, (chosen[0],), (chosen[1],))[chosen]
    return TransferModel(kind, grid, chosen[0], chosen[1], selection, final, calibration, data)


def predict_transfer(results, *, kind: str = "transfer", seed: int = 0, **options) -> pd.DataFrame:
    """Every (model, source, target) cell of the grid: measured Δ where measured, a prediction elsewhere.

    Columns :data:`PREDICTION_COLUMNS`; ``delta_lo``/``delta_hi`` bound a 90% predictive
    interval and ``p_harm`` is P(Δ <= -1 pp). Options go to :func:`fit_transfer_model`.
    """
    return fit_transfer_model(results, kind=kind, seed=seed, **options).predict()


# --- scoring predictions --------------------------------------------------------------------

SCORE_COLUMNS = ["n_cells", "rmse", "mae", "spearman", "sign_accuracy", "harm_auc", "coverage", "interval_width"]


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney, ties halved)."""
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if not n_pos or not n_neg:
        return np.nan
    ranks = stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_spearman(frame: pd.DataFrame) -> float:
    """Mean over (model, target) of the rank correlation of predicted and measured Δ across sources."""
    keys = [MODEL, TARGET_TASK, TARGET_LANGUAGE]
    ranked = frame[keys].assign(
        truth=frame.groupby(keys)["delta_true"].rank(),
        pred=frame.groupby(keys)["delta_pred"].rank(),
    )
    correlations = []
    for _, group in ranked.groupby(keys):
        if len(group) >= 3 and group["truth"].std() > 0 and group["pred"].std() > 0:
            correlations.append(np.corrcoef(group["truth"], group["pred"])[0, 1])
    return float(np.mean(correlations)) if correlations else np.nan


def _scores(frame: pd.DataFrame) -> dict[str, float]:
    error = frame["delta_pred"] - frame["delta_true"]
    harmful = (frame["delta_true"] <= HARM_THRESHOLD).to_numpy()
    return {
        "n_cells": len(frame),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "spearman": _mean_spearman(frame),
        "sign_accuracy": float(np.mean((frame["delta_pred"] > 0) == (frame["delta_true"] > 0))),
        "harm_auc": _auc(frame["p_harm"].to_numpy(), harmful),
        "coverage": float(np.mean((frame["delta_lo"] <= frame["delta_true"]) & (frame["delta_true"] <= frame["delta_hi"]))),
        "interval_width": float(np.mean(frame["delta_hi"] - frame["delta_lo"])),
    }


def transfer_scores(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """How well predictions match measurements on the cells predicted (``measured`` false), per model and pooled ("all").

    ``truth`` holds the key columns and the measured Δ (``delta_score_norm_mean``, or
    ``delta`` as :func:`synthetic_transfer_table` writes it). RMSE and MAE in pp; Spearman is
    the mean over (model, target) of the rank correlation across sources; harm AUC ranks
    cells by ``p_harm`` against Δ <= -1; coverage is the share inside [delta_lo, delta_hi].
    """
    column = DELTA if DELTA in truth else "delta"
    merged = predicted[~predicted["measured"].astype(bool)].merge(truth[KEYS + [column]].rename(columns={column: "delta_true"}), on=KEYS)
    merged = merged[merged["delta_true"].notna()]
    if merged.empty:
        raise InsufficientData("no predicted cell has a measurement to score it against")
    rows = [{MODEL: model, **_scores(group)} for model, group in merged.groupby(MODEL)]
    rows.append({MODEL: "all", **_scores(merged)})
    return pd.DataFrame(rows, columns=[MODEL, *SCORE_COLUMNS])


def cross_validate(results, k: int = 5, *, per_model: bool = False, seed: int = 0, kinds: Sequence[str] = KINDS) -> pd.DataFrame:
    """K-fold cross-validation over held-out sources, for our model and the baselines, per model and pooled.

    ``per_model=False`` holds a source out for every model at once (nothing is known of it);
    ``per_model=True`` holds out (model, source) pairs, so a source measured for other models
    informs its prediction. Every method is fitted on the same folds, its intervals calibrated
    by its own inner cross-validation. Columns: scheme, method, model_name, then
    :data:`SCORE_COLUMNS` (see :func:`transfer_scores`).
    """
    frame = load_results_table(results)
    frame = frame[has_source(frame) & frame[DELTA].notna()].reset_index(drop=True)
    _prepare(frame)
    rng = np.random.default_rng(seed)
    pair = frame[MODEL].astype(str) + "\0" + frame[SOURCE_TASK].astype(str) + "/" + frame[SOURCE_LANGUAGE].astype(str)
    unit = pair if per_model else frame[SOURCE_TASK].astype(str) + "/" + frame[SOURCE_LANGUAGE].astype(str)
    units = rng.permutation(unit.unique())
    if len(units) < k:
        raise InsufficientData(f"{k}-fold cross-validation needs at least {k} measured sources; the table has {len(units)}")
    predictions = {kind: [] for kind in kinds}
    for group in np.array_split(units, k):
        held_out = unit.isin(group).to_numpy()
        for kind in kinds:
            model = fit_transfer_model(frame[~held_out], kind=kind, seed=seed)
            predictions[kind].append(model.predict(frame.loc[held_out, KEYS]))
    tables = []
    for kind, parts in predictions.items():
        scores = transfer_scores(pd.concat(parts, ignore_index=True), frame)
        tables.append(scores.assign(scheme="model-source" if per_model else "source", method=kind))
    return pd.concat(tables, ignore_index=True)[["scheme", "method", MODEL, *SCORE_COLUMNS]]


# --- choosing what to train -----------------------------------------------------------------

DESIGN_RIDGE = 3.0
"""Prior precision of the interaction terms when choosing sources (a typical chosen ridge)."""
DESIGN_MAIN_RIDGE = 1.0
"""Prior precision of the additive terms when choosing sources: effects about the size of the noise (1 pp), as in
published studies. A vaguer prior makes the criterion chase the intercept's confounded directions and repeat a language."""


def _measured_pairs(frame: pd.DataFrame | None, grid: Grid) -> np.ndarray:
    out = np.zeros((len(grid.models), len(grid.cells)), dtype=bool)
    if frame is None or frame.empty or SOURCE_TASK not in frame:
        return out
    rows = frame[has_source(frame)]
    if DELTA in rows:
        rows = rows[pd.to_numeric(rows[DELTA], errors="coerce").notna()]
    cells = {f"{task}/{language}" for task, language in grid.cells}
    rows = rows[(rows[SOURCE_TASK].astype(str) + "/" + rows[SOURCE_LANGUAGE].astype(str)).isin(cells)]
    rows = rows[rows[MODEL].astype(str).isin(grid.models)]
    model, source, _ = grid.codes(rows.assign(**{TARGET_TASK: rows[SOURCE_TASK], TARGET_LANGUAGE: rows[SOURCE_LANGUAGE]}))
    out[model, source] = True
    return out


def _as_frame(measured) -> pd.DataFrame | None:
    if measured is None or isinstance(measured, pd.DataFrame):
        return measured
    triples = list(measured)
    return pd.DataFrame(triples, columns=[MODEL, SOURCE_TASK, SOURCE_LANGUAGE]) if triples else None


@one_blas_thread
def choose_sources(
    results_or_grid: pd.DataFrame,
    budget: int,
    *,
    measured: pd.DataFrame | Iterable[tuple[str, str, str]] | None = None,
    per_model: bool = True,
) -> list[SourceChoice]:
    """The next ``budget`` sources to train for each model (or, ``per_model=False``, for all models at once).

    ``results_or_grid`` is a results table (its sources with a measured Δ count as measured)
    or any frame with ``model_name, eval_dataset, eval_language`` naming the grid's models and
    cells; ``measured`` adds (model, task, language) triples or rows already trained.

    Criterion (I-optimal design, greedy): with the linear part of the transfer model as a
    Bayesian ridge regression, choose the source whose targets most reduce the summed
    predictive variance of the mean Δ over every cell of the grid. It needs no Δ at all, so
    it plans a study before anything is trained; it ignores the low-rank term. A measured
    source is never proposed. Per model, choices go round-robin over the models, each model's
    next source chosen knowing the others' so far (shared terms make one model's source
    inform another). Shared choices come back with ``model=None``.
    """
    grid = Grid.of(results_or_grid)
    taken = _measured_pairs(results_or_grid, grid) | _measured_pairs(_as_frame(measured), grid)
    n_models, n_cells = len(grid.models), len(grid.cells)
    every = grid.frame()
    m_all, s_all, t_all = grid.codes(every)
    design, penalised = _design("transfer", grid, m_all, s_all, t_all)
    design = design.tocsr()
    penalty = np.where(penalised, DESIGN_RIDGE, DESIGN_MAIN_RIDGE)

    def rows_of(model: np.ndarray, source: int) -> np.ndarray:
        return ((model[:, None] * n_cells + source) * n_cells + np.arange(n_cells)).ravel()

    measured_rows = np.concatenate([rows_of(np.array([m]), s) for m, s in np.argwhere(taken)]) if taken.any() else np.array([], int)
    block = design[measured_rows]
    covariance = linalg.inv((block.T @ block).toarray() + np.diag(penalty))
    everywhere = (design.T @ design).toarray()
    spread = covariance @ everywhere @ covariance

    def gain(rows: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        x = design[rows]
        projected = (x @ covariance).T  # p x rows
        inner = np.linalg.inv(np.eye(len(rows)) + x @ projected)
        return float(np.sum(inner * (x @ spread @ x.T).T)), projected, inner

    choices = []
    rounds = [(m,) for _ in range(budget) for m in range(n_models)] if per_model else [tuple(range(n_models))] * budget
    for models in rounds:
        model_index = np.array(models)
        free = [s for s in range(n_cells) if not taken[model_index, s].any()]
        if not free:
            continue
        gains = [gain(rows_of(model_index, s)) for s in free]
        best = int(np.argmax([g[0] for g in gains]))
        source, (_, projected, inner) = free[best], gains[best]
        taken[model_index, source] = True
        quad = everywhere @ projected
        back = covariance @ quad
        spread = (
            spread
            - projected @ inner @ back.T
            - back @ inner @ projected.T
            + projected @ inner @ (projected.T @ quad) @ inner @ projected.T
        )
        covariance = covariance - projected @ inner @ projected.T
        task, language = grid.cells[source]
        choices.append(SourceChoice(grid.models[models[0]] if per_model else None, task, language))
    return choices


# --- recommending a source ------------------------------------------------------------------

RECOMMEND_COLUMNS = [MODEL, SOURCE_TASK, SOURCE_LANGUAGE, "n_targets", "gain", "gain_lo", "gain_hi", "p_harm_any", "measured", "rank"]


def _matching_targets(grid: Grid, patterns: Sequence[str]) -> list[tuple[str, str]]:
    matched, unmatched = cells_matching(patterns, [Cell(task, language) for task, language in grid.cells])
    if unmatched:
        names = ", ".join(f"{task}/{language}" for task, language in grid.cells)
        raise NoMatchingTargets(f"target pattern(s) {', '.join(map(repr, unmatched))} match no target; the targets are {names}")
    return [(cell.task, cell.language) for cell in matched]


def recommend_sources(
    results,
    targets: Sequence[str],
    *,
    model: str | None = None,
    top: int = 10,
    max_harm: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Rank sources to fine-tune on by expected mean gain over the targets matching ``targets``.

    Patterns are ``task/language`` with shell wildcards (``truthfulqa/*``, ``*/hi``); a bare
    name matches a task or a language. Every source of the grid is ranked, measured or
    predicted, per model (``model`` keeps one); ``top`` per model are returned. See
    :func:`rank_sources` for the columns.
    """
    return rank_sources(predict_transfer(results, seed=seed), targets, model=model, top=top, max_harm=max_harm)


def rank_sources(
    table: pd.DataFrame, targets: Sequence[str], *, model: str | None = None, top: int = 10, max_harm: float | None = None
) -> pd.DataFrame:
    """:func:`recommend_sources` on a table :func:`predict_transfer` made (one fit, many questions).

    ``gain_lo`` and ``gain_hi`` average the cells' 90% bounds (errors of one source's cells move
    together, so this is the cautious reading); ``p_harm_any`` = 1 - prod(1 - p_harm) over the
    chosen targets, which overstates the risk when errors are correlated. ``max_harm`` drops
    sources above that probability.
    """
    grid = Grid.of(table)
    if model is not None and model not in grid.models:
        raise DonorsError(f"model {model!r} is not in the results; they have {', '.join(grid.models)}")
    cells = pd.DataFrame(_matching_targets(grid, targets), columns=[TARGET_TASK, TARGET_LANGUAGE])
    chosen = table.merge(cells, on=[TARGET_TASK, TARGET_LANGUAGE])
    if model is not None:
        chosen = chosen[chosen[MODEL] == model]
    keys = [MODEL, SOURCE_TASK, SOURCE_LANGUAGE]
    ranked = (
        chosen.assign(safe=np.log1p(-chosen["p_harm"].clip(upper=1 - 1e-12)))
        .groupby(keys, sort=False)
        .agg(
            n_targets=("delta_pred", "size"),
            gain=("delta_pred", "mean"),
            gain_lo=("delta_lo", "mean"),
            gain_hi=("delta_hi", "mean"),
            safe=("safe", "sum"),
            measured=("measured", "any"),
        )
        .reset_index()
    )
    source_measured = table.groupby(keys)["measured"].any().rename("source_measured").reset_index()
    ranked = ranked.drop(columns="measured").merge(source_measured, on=keys).rename(columns={"source_measured": "measured"})
    ranked["p_harm_any"] = -np.expm1(ranked.pop("safe"))
    if max_harm is not None:
        ranked = ranked[ranked["p_harm_any"] <= max_harm]
    ranked = ranked.sort_values([MODEL, "gain"], ascending=[True, False])
    ranked["rank"] = ranked.groupby(MODEL).cumcount() + 1
    return ranked[ranked["rank"] <= top][RECOMMEND_COLUMNS].reset_index(drop=True)


def fine_tuning_advice(table: pd.DataFrame, *, top: int = 3) -> pd.DataFrame:
    """The report's "what to fine-tune on": per model, the best ``top`` sources for each target task and for all targets."""
    groups = [("all targets", ["*"])] + [(f"{task}/*", [f"{task}/*"]) for task in sorted(table[TARGET_TASK].unique())]
    frames = [rank_sources(table, patterns, top=top).assign(targets=name) for name, patterns in groups]
    advice = pd.concat(frames, ignore_index=True)
    return advice[["targets", *RECOMMEND_COLUMNS]].sort_values([MODEL, "targets", "rank"], kind="stable", ignore_index=True)


def prediction_tables(results) -> dict[str, pd.DataFrame]:
    """What a study's analysis adds: ``predicted_transfer`` (every cell, measured or predicted) and ``what_to_fine_tune_on``."""
    table = predict_transfer(results)
    return {"predicted_transfer": table, "what_to_fine_tune_on": fine_tuning_advice(table)}


# --- generated tables with planted structure ------------------------------------------------

SYNTHETIC_TASKS = ("arc_challenge", "global_mmlu", "hellaswag", "truthfulqa")
SYNTHETIC_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")
SYNTHETIC_REGIMES = {"MT-ML": 2.0, "MT-CL": 1.2, "CT-ML": 0.8, "CT-CL": 0.8}


@dataclass(frozen=True)
class SyntheticTransfer:
    """A generated study: ``results`` holds the measured rows (published schema), ``truth`` every cell.

    ``truth`` has the key columns, ``regime``, ``delta`` (what a measurement would give),
    ``delta_mean`` (without seed noise) and ``measured``.
    """

    results: pd.DataFrame
    truth: pd.DataFrame


def _covering_sources(rng: np.random.Generator, n_tasks: int, n_languages: int, n_sources: int) -> np.ndarray:
    """``n_sources`` distinct cells (task * n_languages + language) with every task and every language among them."""
    languages = rng.permutation(n_languages)
    tasks = np.concatenate([rng.permutation(n_tasks), rng.integers(0, n_tasks, max(0, n_languages - n_tasks))])[:n_languages]
    chosen = list(tasks * n_languages + languages)
    rest = rng.permutation(np.setdiff1d(np.arange(n_tasks * n_languages), chosen))
    return np.array(chosen + list(rest[: n_sources - len(chosen)]))


def synthetic_transfer_table(
    *,
    n_models: int = 4,
    tasks: Sequence[str] = SYNTHETIC_TASKS,
    languages: Sequence[str] = SYNTHETIC_LANGUAGES,
    n_sources: int | None = 12,
    interactions: float = 0.0,
    noise_sd: float = 1.0,
    missing: float = 0.0,
    shared_sources: bool = False,
    seed: int = 0,
) -> SyntheticTransfer:
    """A transfer study with planted structure, for tests and the benchmark.

    Δ = model x regime + donor task + donor language + recipient cell (the additive truth),
    plus, scaled by ``interactions``: task x task and language x language (rank 2) terms, a
    rank-2 source x target term whose source loadings come from task, language and the cell,
    and a model x source term; each model sees the interactions at its own strength (x 1 +/- 0.2),
    which no model here fits exactly. ``noise_sd`` is the seed noise of a measurement.
    Each model measures ``n_sources`` sources (None: all) covering every task and language,
    the same ones for every model when ``shared_sources``; ``missing`` of their cells are lost.
    """
    rng = np.random.default_rng(seed)
    n_tasks, n_languages = len(tasks), len(languages)
    n_cells = n_tasks * n_languages
    models = tuple(f"synth-{i}-{size}B" for i, size in enumerate(rng.choice([1, 3, 7, 8], n_models)))
    grid = Grid(models, tuple((task, language) for task in tasks for language in languages))
    frame = grid.frame()
    m, s, t = grid.codes(frame)
    task, language = grid.cell_task, grid.cell_language
    regime = frame["regime"].map(SYNTHETIC_REGIMES).to_numpy()
    model_regime = rng.normal(0, 1, (n_models, 1)) + rng.normal(0, 0.5, (n_models, 4))
    mean = (
        regime
        + model_regime[m, grid.regime(s, t)]
        + rng.normal(0, 1, n_tasks)[task[s]]
        + rng.normal(0, 1, n_languages)[language[s]]
        + rng.normal(0, 1, n_cells)[t]
    )
    if interactions:
        task_task = rng.normal(0, 1, (n_tasks, n_tasks))
        embedding = rng.normal(0, 0.8, (n_languages, 2))
        loading = rng.normal(0, 0.7, (n_tasks, 2))[task] + rng.normal(0, 0.7, (n_languages, 2))[language] + rng.normal(0, 0.4, (n_cells, 2))
        response = rng.normal(0, 1, (n_cells, 2))
        strength = 1 + rng.normal(0, 0.2, n_models)
        interaction = (
            task_task[task[s], task[t]]
            + np.einsum("ij,ij->i", embedding[language[s]], embedding[language[t]])
            + np.einsum("ij,ij->i", loading[s], response[t])
            + rng.normal(0, 0.3, (n_models, n_cells))[m, s]
        )
        mean = mean + interactions * strength[m] * interaction
    delta = mean + rng.normal(0, noise_sd, len(frame))
    measured_pairs = np.zeros((n_models, n_cells), dtype=bool)
    shared = _covering_sources(rng, n_tasks, n_languages, n_sources or n_cells)
    for i in range(n_models):
        measured_pairs[i, shared if shared_sources else _covering_sources(rng, n_tasks, n_languages, n_sources or n_cells)] = True
    lost = rng.random(len(frame)) < missing
    measured = measured_pairs[m, s] & ~lost
    truth = frame.assign(delta=delta, delta_mean=mean, measured=measured)
    sizes = np.array([float(name.rsplit("-", 1)[1].rstrip("B")) for name in models])
    results = frame[measured_pairs[m, s]].assign(
        **{
            SIZE: sizes[m[measured_pairs[m, s]]],
            DELTA: np.where(lost, np.nan, delta)[measured_pairs[m, s]],
            DELTA_SE: noise_sd,
            "n_seeds": 3,
        }
    )
    return SyntheticTransfer(results.reset_index(drop=True), truth)
