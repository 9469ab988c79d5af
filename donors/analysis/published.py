"""The published study's analyses A1-A4 and A6-A14 as pure functions on the results table.

Each function takes the results table (the full frame, or any subset of rows of it) and
applies the protocol's own subsetting, so ``f(table) == f(transfer_set(table))`` wherever
the protocol hands an analysis the transfer set T. Nothing is read or written here.
A5 lives in :mod:`typology`, A15 in :mod:`variance` and A16 in :mod:`consistency`;
:func:`run_published_analyses` runs them all.
"""

from __future__ import annotations

import functools
import traceback
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from donors.analysis.consistency import (
    consistency_by_family,
    consistency_by_model,
    consistency_by_size,
)
from donors.analysis.constants import (
    CURATED_DATASETS,
    DELTA,
    HARM,
    HARM_THRESHOLD,
    HUMAN_TRANSLATED,
    KEY_COLUMNS,
    LANGUAGE_GROUPS,
    MACHINE_TRANSLATED,
    MEAN,
    MEDIAN,
    MODEL,
    MT_CL,
    MT_ML,
    PARETO_MIN_OFF,
    PARETO_MIN_ON,
    POSITIVE,
    PUBLISHED_BY_REGIME,
    PUBLISHED_REGIME_COUNTS,
    PUBLISHED_ROWS,
    PUBLISHED_TOLERANCE,
    PUBLISHED_TRANSFER,
    REGIME,
    REGIMES,
    ROUND_DECIMALS,
    SIZE,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    SUMMARY_COLUMNS,
    TARGET_LANGUAGE,
    TARGET_TASK,
    TASK_AXIS_ORDER,
    N,
)
from donors.analysis.results import (
    delta_values,
    derive_regime,
    harm_rate,
    load_results_table,
    model_family,
    on_source_set,
    ordered_names,
    positive_rate,
    role_scores,
    same_language,
    same_task,
    size_bucket,
    transfer_set,
    transfer_statistics,
    with_regime,
)
from donors.analysis.typology import linguistic_correlations
from donors.analysis.variance import variance_decomposition
from donors.errors import InsufficientData
from donors.grid import STUDY_LANGUAGES

PARETO_X = "MT-CL gain (Δ pp)"
PARETO_Y = "Mean off-task Δ (pp)"
PARETO_UNIT = [MODEL, SIZE, "family", "size_bucket", SOURCE_TASK, SOURCE_LANGUAGE]
PARETO_FAMILY_UNIT = [MODEL, SIZE, "family", SOURCE_TASK]


def _summary_frame(rows: Mapping, index: pd.Index) -> pd.DataFrame:
    """One row of :func:`transfer_statistics` per group of Δ values."""
    records = [transfer_statistics(delta) for delta in rows.values()]
    table = pd.DataFrame(records, index=index, columns=list(SUMMARY_COLUMNS))
    return table.astype({N: int})


def _mt_cl_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Same dataset, other language: the cross-lingual rows A9-A11 and A14 pool."""
    return df[same_task(df) & ~same_language(df)]


def _ct_ml_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Other dataset, same language: the cross-task rows A12 and A13 pool."""
    return df[~same_task(df) & same_language(df)]


# A1-A4: headline statistics -------------------------------------------------------------


def global_uplift(df: pd.DataFrame) -> pd.DataFrame:
    """A1: mean, median, positive rate and n of Δ over T, rounded to 4 decimals."""
    statistics = transfer_statistics(delta_values(transfer_set(df)))
    columns = [MEAN, MEDIAN, POSITIVE, N]
    return pd.DataFrame([{c: statistics[c] for c in columns}]).round(ROUND_DECIMALS)


def regime_summary(df: pd.DataFrame) -> pd.DataFrame:
    """A2: n, mean, median, positive and harm rate per regime, unrounded.

    MT-ML comes from O; the other three from T bucketed by the re-derived regime. Every
    regime has a row (n = 0 when the grid has none of it).
    """
    transfer = with_regime(transfer_set(df))
    rows = {MT_ML: on_source_set(df)[DELTA]}
    rows |= {r: transfer.loc[transfer[REGIME] == r, DELTA] for r in REGIMES if r != MT_ML}
    return _summary_frame(rows, pd.Index(list(rows), name="bucket"))


def mtcl_harm_breakdown(df: pd.DataFrame) -> pd.DataFrame:
    """A3: where harm occurs within MT-CL, by language, dataset, size bucket and family.

    Indexed by (group, key), sorted, rounded to 4 decimals. Rows of unknown model size
    fall outside every size bucket.
    """
    rows = with_regime(transfer_set(df))
    rows = rows[(rows[REGIME] == MT_CL) & rows[DELTA].notna()]
    keys = {
        "by_language": rows[TARGET_LANGUAGE],
        "by_dataset": rows[TARGET_TASK],
        "by_size_bucket": rows[SIZE].map(size_bucket),
        "by_family": rows[MODEL].map(model_family),
    }
    groups = {("overall", "ALL"): rows[DELTA]}
    for group, key in keys.items():
        groups |= {(group, k): delta for k, delta in rows[DELTA].groupby(key)}
    index = pd.MultiIndex.from_tuples(list(groups), names=["group", "key"])
    return _summary_frame(groups, index).sort_index().round(ROUND_DECIMALS)


def construction_type(dataset: str, curated: Collection[str] = CURATED_DATASETS) -> str:
    """Human-translated for a curated benchmark, machine-translated otherwise (A4)."""
    return HUMAN_TRANSLATED if dataset in curated else MACHINE_TRANSLATED


def mtcl_by_construction_type(df: pd.DataFrame, *, curated: Collection[str] = CURATED_DATASETS) -> pd.DataFrame:
    """A4: MT-CL on human- versus machine-translated benchmarks, from the full frame.

    Rows ``all``, ``human-translated``, ``machine-translated``; index named ``subset``.
    """
    rows = with_regime(df)
    rows = rows[rows[REGIME] == MT_CL]
    types = rows[TARGET_TASK].map(lambda d: construction_type(d, curated))
    subsets = {"all": rows[DELTA]}
    subsets |= {t: rows.loc[types == t, DELTA] for t in sorted([HUMAN_TRANSLATED, MACHINE_TRANSLATED])}
    return _summary_frame(subsets, pd.Index(list(subsets), name="subset")).round(ROUND_DECIMALS)


# A6-A8: on-task versus off-task profiles ---------------------------------------------------


def pareto_profiles(df: pd.DataFrame) -> pd.DataFrame:
    """A6: per source run, mean MT-CL gain (x) against mean off-task Δ (y) and harm rate.

    One unit per (model, size, family, size bucket, source dataset, source language),
    NaN keys kept; units need n_on >= 3 and n_off >= 5.
    """
    rows = transfer_set(df).assign(
        family=lambda d: d[MODEL].map(model_family),
        size_bucket=lambda d: d[SIZE].map(size_bucket),
    )
    on_task = rows[same_task(rows) & ~same_language(rows)]
    off_task = rows[~same_task(rows)]
    on = on_task.groupby(PARETO_UNIT, dropna=False)[DELTA].agg(["mean", "count"])
    on.columns = [PARETO_X, "n_on"]
    off = off_task.assign(harmful=off_task[DELTA] <= HARM_THRESHOLD).groupby(PARETO_UNIT, dropna=False)
    off = pd.DataFrame(
        {
            PARETO_Y: off[DELTA].mean(),
            "n_off": off[DELTA].count(),
            "harm_rate": 100.0 * off["harmful"].sum() / off[DELTA].count(),
        }
    )
    profiles = on.join(off, how="inner").reset_index()
    keep = (profiles["n_on"] >= PARETO_MIN_ON) & (profiles["n_off"] >= PARETO_MIN_OFF)
    columns = PARETO_UNIT + [PARETO_X, "n_on", PARETO_Y, "n_off", "harm_rate"]
    return profiles.loc[keep, columns].reset_index(drop=True)


def pareto_family_summary(profiles: pd.DataFrame) -> pd.DataFrame:
    """A7: the A6 profiles averaged over source languages per (model, dataset)."""
    grouped = profiles.groupby(PARETO_FAMILY_UNIT, dropna=False)[[PARETO_X, PARETO_Y]]
    return grouped.mean().reset_index()


def task_on_off_summary(df: pd.DataFrame) -> pd.DataFrame:
    """A8: per source task, pooled effects on the same task elsewhere versus other tasks.

    on = same dataset in another language; off = any other dataset. Sorted by task.
    """
    rows = transfer_set(df)
    on = rows[same_task(rows) & ~same_language(rows)]
    off = rows[~same_task(rows)]
    tasks = sorted(rows[SOURCE_TASK].dropna().unique())
    records = []
    for task in tasks:
        on_delta = on.loc[on[SOURCE_TASK] == task, DELTA].dropna()
        off_delta = off.loc[off[SOURCE_TASK] == task, DELTA].dropna()
        records.append(
            {
                "task": task,
                "on_delta": on_delta.mean() if len(on_delta) else np.nan,
                "on_positive_transfer_rate_pct": positive_rate(on_delta),
                "on_harm_pct": harm_rate(on_delta),
                "off_delta": off_delta.mean() if len(off_delta) else np.nan,
                "off_positive_transfer_rate_pct": positive_rate(off_delta),
                "off_harm_pct": harm_rate(off_delta),
            }
        )
    columns = [
        "task",
        "on_delta",
        "on_positive_transfer_rate_pct",
        "on_harm_pct",
        "off_delta",
        "off_positive_transfer_rate_pct",
        "off_harm_pct",
    ]
    return pd.DataFrame(records, columns=columns)


# A9-A12: donors and recipients -------------------------------------------------------------


def language_donor_recipient(df: pd.DataFrame) -> pd.DataFrame:
    """A9: each language's two-stage mean Δ as a source (donor) and as a target (recipient).

    Over MT-CL rows; every model counts equally. Columns lang, donor, recipient.
    """
    rows = _mt_cl_rows(transfer_set(df))
    return role_scores(rows, SOURCE_LANGUAGE, TARGET_LANGUAGE, "lang")


def language_group(language: str, groups: Mapping[str, str] = LANGUAGE_GROUPS) -> str:
    """The published language group (A10); an unlisted language is a group of its own."""
    return groups.get(language, language)


def language_roles_by_family(roles: pd.DataFrame, *, groups: Mapping[str, str] = LANGUAGE_GROUPS) -> pd.DataFrame:
    """A10: unweighted mean of the A9 donor and recipient scores per language group."""
    family = roles["lang"].map(lambda lang: language_group(lang, groups)).rename("family")
    table = roles[["donor", "recipient"]].groupby(family).mean()
    return table.sort_index().reset_index()


def language_roles(df: pd.DataFrame, *, datasets: Collection[str] | None = None, exclude: bool = False) -> pd.DataFrame:
    """A11: the A9 role table restricted by eval dataset, from the full frame.

    ``datasets=None`` keeps every dataset; otherwise rows whose eval dataset is in
    ``datasets`` are kept (or, with ``exclude``, dropped).
    """
    rows = _mt_cl_rows(df)
    if datasets is not None:
        rows = rows[rows[TARGET_TASK].isin(list(datasets)) != exclude]
    return role_scores(rows, SOURCE_LANGUAGE, TARGET_LANGUAGE, "lang")


def curated_vs_translated_donor_correlation(curated: pd.DataFrame, translated: pd.DataFrame) -> pd.DataFrame:
    """A11: Spearman ρ of the curated against the translated donor scores.

    Over the languages both tables score; NaN with fewer than two.
    """
    shared = curated[["lang", "donor"]].merge(translated[["lang", "donor"]], on="lang").dropna()
    rho = np.nan
    if len(shared) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = stats.spearmanr(shared["donor_x"], shared["donor_y"]).statistic
    return pd.DataFrame({"spearman_rho": [rho]})


def task_donor_recipient(df: pd.DataFrame) -> pd.DataFrame:
    """A12: each dataset's two-stage mean Δ as donor and recipient over CT-ML rows."""
    rows = _ct_ml_rows(transfer_set(df))
    return role_scores(rows, SOURCE_TASK, TARGET_TASK, "dataset")


# A13-A14: transfer matrices ----------------------------------------------------------------


def _transfer_matrix(rows: pd.DataFrame, names: list[str], source: str, target: str, index_name: str) -> pd.DataFrame:
    matrix = rows.groupby([source, target])[DELTA].mean().unstack()
    matrix = matrix.reindex(index=names, columns=names)
    matrix.index.name, matrix.columns.name = index_name, None
    return matrix


def task_transfer_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """A13: mean Δ from each source task to each other task, pooled over CT-ML rows.

    Published axis order for known tasks, then the rest sorted; the diagonal is NaN.
    The index, named ``source_task``, is saved as the first column.
    """
    rows = transfer_set(df)
    names = ordered_names({*rows[SOURCE_TASK], *rows[TARGET_TASK]}, TASK_AXIS_ORDER)
    return _transfer_matrix(_ct_ml_rows(rows), names, SOURCE_TASK, TARGET_TASK, "source_task")


def language_transfer_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """A14: mean Δ from each source language to each other language over MT-CL rows.

    The same cells A5 correlates with distance; the diagonal is empty. The index, named
    ``source_language``, is saved as the first column.
    """
    rows = transfer_set(df)
    names = ordered_names({*rows[SOURCE_LANGUAGE], *rows[TARGET_LANGUAGE]}, STUDY_LANGUAGES)
    return _transfer_matrix(rows[same_task(rows)], names, SOURCE_LANGUAGE, TARGET_LANGUAGE, "source_language")


# A15 inputs --------------------------------------------------------------------------------


def touches_curated(df: pd.DataFrame, curated: Collection[str] = CURATED_DATASETS) -> pd.Series:
    """Rows whose source or target dataset is curated (the A15 ``global_mmlu`` input)."""
    return df[SOURCE_TASK].isin(list(curated)) | df[TARGET_TASK].isin(list(curated))


# Driver ------------------------------------------------------------------------------------


def _then(first: Callable, second: Callable) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """``second(first(df))``: a table computed from another table (A7, A10)."""

    def step(df: pd.DataFrame) -> pd.DataFrame:
        return second(first(df))

    step.__name__ = second.__name__
    return step


def published_analyses(*, curated: Collection[str] = CURATED_DATASETS) -> dict[str, Callable[[pd.DataFrame], pd.DataFrame]]:
    """Every published table by its stable name, as a function of the full results table.

    In the published driver's order, one callable per table so that each can be run (or
    timed) on its own. ``curated`` names the human-translated datasets (A4, A11, A15).
    """
    curated = frozenset(curated)
    translated_roles = functools.partial(language_roles, datasets=curated, exclude=True)

    def require_curated(df: pd.DataFrame) -> pd.DataFrame:
        if not curated:
            raise InsufficientData("no task is named human-translated (curated: []), and this analysis reads those")
        if not touches_curated(df, curated).any():
            raise InsufficientData(
                f"the table has no rows of the human-translated dataset(s) {', '.join(sorted(curated))} this analysis reads "
                "(the published study's curated benchmark); name yours with --curated TASK or the config's curated: "
                "(api: curated=[...])"
            )
        return df

    def curated_roles(df: pd.DataFrame) -> pd.DataFrame:
        return language_roles(require_curated(df), datasets=curated)

    def donor_correlation(df: pd.DataFrame) -> pd.DataFrame:
        return curated_vs_translated_donor_correlation(curated_roles(df), translated_roles(df))

    def variance_with_curated(df: pd.DataFrame) -> pd.DataFrame:
        return variance_decomposition(require_curated(df)[touches_curated(df, curated)])

    def variance_without_curated(df: pd.DataFrame) -> pd.DataFrame:
        return variance_decomposition(df[~touches_curated(df, curated)])

    return {
        "global_uplift": global_uplift,
        "regime_summary": regime_summary,
        "mtcl_harm_breakdown": mtcl_harm_breakdown,
        "mtcl_by_construction_type": functools.partial(mtcl_by_construction_type, curated=curated),
        "linguistic_correlations": linguistic_correlations,
        "pareto_profiles": pareto_profiles,
        "pareto_family_summary": _then(pareto_profiles, pareto_family_summary),
        "task_on_off_summary": task_on_off_summary,
        "language_donor_recipient": language_donor_recipient,
        "language_roles_by_family": _then(language_donor_recipient, language_roles_by_family),
        "language_roles_all": language_roles,
        "language_roles_curated": curated_roles,
        "language_roles_translated": translated_roles,
        "curated_vs_translated_donor_correlation": donor_correlation,
        "task_donor_recipient": task_donor_recipient,
        "task_transfer_matrix": task_transfer_matrix,
        "language_transfer_matrix": language_transfer_matrix,
        "variance_decomposition_all": variance_decomposition,
        "variance_decomposition_global_mmlu": variance_with_curated,
        "variance_decomposition_translated": variance_without_curated,
        "consistency_by_model": consistency_by_model,
        "consistency_by_family": consistency_by_family,
        "consistency_by_size": consistency_by_size,
    }


SKIPPED_ANALYSES = "skipped_analyses"
NO_UNIT = "no unit met the minimums of docs/protocol.md section 3"
"""Why a published table came out empty: the thresholds (n_on, n_off, recipients, ...) kept every unit out."""
SKIPPED_COLUMNS = ["analysis", "reason"]
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def skip_reason(error: Exception) -> str:
    """Why an analysis did not run, from the error :func:`run_analysis` caught, as one line.

    Too little data (:class:`InsufficientData`) is said as it is; anything else is an error
    in the data or the code, so its type, message and the donors line that raised it stay.
    """
    if isinstance(error, InsufficientData):
        return str(error)
    reason = f"{type(error).__name__}: {error}".replace("\n", " ")
    frames = traceback.extract_tb(error.__traceback__)[1:]  # [0] is run_analysis, which caught it
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(_PACKAGE_ROOT / "donors")]
    if ours or frames:
        frame = (ours or frames)[-1]
        path = Path(frame.filename).resolve()
        where = path.relative_to(_PACKAGE_ROOT) if ours else path.name
        reason += f" (at {where}:{frame.lineno})"
    return reason


def run_analysis(name: str, compute: Callable[[], pd.DataFrame], skipped: list[tuple[str, str]]) -> pd.DataFrame | None:
    """``compute()``; when it raises, None, with ``(name, reason)`` appended to ``skipped``.

    Only :class:`Exception`: an interrupt still stops the run.
    """
    try:
        return compute()
    except Exception as error:
        skipped.append((name, skip_reason(error)))
        return None


def skipped_table(skipped: Collection[tuple[str, str]]) -> pd.DataFrame:
    """The ``skipped_analyses`` table: one row (analysis, reason) per analysis that did not run."""
    return pd.DataFrame(list(skipped), columns=SKIPPED_COLUMNS)


def run_published_analyses(
    df: pd.DataFrame, *, curated: Collection[str] = CURATED_DATASETS, no_rows: str | None = None
) -> dict[str, pd.DataFrame]:
    """Run A1-A16 on a results table of any grid; tables keyed by their published names.

    Dependent tables (A7 from A6, A10 from A9, the A11 correlation) are computed from
    their parents once rather than through :func:`published_analyses`.

    Each analysis runs on its own. One that raises (too little data, or an error) is left
    out and listed, with its reason, in a last table ``skipped_analyses`` (columns
    analysis, reason), which is there only when something was skipped; a dependent table
    whose parent was skipped is skipped with it, for the same reason. A table that comes
    out empty is listed there too (``no_rows``: the reason to give; by default, that no unit
    met the protocol's minimums), not returned blank.
    """
    df = load_results_table(df)
    steps = published_analyses(curated=curated)
    derived = {
        "pareto_family_summary": (["pareto_profiles"], pareto_family_summary),
        "language_roles_by_family": (["language_donor_recipient"], language_roles_by_family),
        "curated_vs_translated_donor_correlation": (
            ["language_roles_curated", "language_roles_translated"],
            curated_vs_translated_donor_correlation,
        ),
    }
    if no_rows is None:
        sizes = [(df[TARGET_LANGUAGE].nunique(), "language"), (df[TARGET_TASK].nunique(), "task")]
        few = " and ".join(f"one {noun}" for count, noun in sizes if count < 2)
        no_rows = f"it gave no rows on this table{f' (it has {few})' if few else ''}: {NO_UNIT}"
    tables: dict[str, pd.DataFrame | None] = {}
    skipped: list[tuple[str, str]] = []

    def run(name: str, compute: Callable[[], pd.DataFrame]) -> None:
        table = run_analysis(name, compute, skipped)
        if table is not None and table.empty:  # said, not returned blank
            skipped.append((name, no_rows))
            table = None
        tables[name] = table

    for name, step in steps.items():
        if name not in derived:
            run(name, functools.partial(step, df))
    for name, (parents, compute) in derived.items():
        missing = [parent for parent in parents if tables[parent] is None]
        if missing:  # it cannot run for its parents' reasons
            reasons = dict(skipped)
            skipped.append((name, "; ".join(dict.fromkeys(reasons[parent] for parent in missing))))
            tables[name] = None
        else:
            run(name, functools.partial(compute, *[tables[parent] for parent in parents]))
    out = {name: tables[name] for name in steps if tables[name] is not None}
    if skipped:
        order = list(steps)
        out[SKIPPED_ANALYSES] = skipped_table(sorted(skipped, key=lambda row: order.index(row[0])))
    return out


def check_published_values(df: pd.DataFrame) -> pd.DataFrame:
    """The release validator's numbers (protocol section 5) against this table.

    Row count, unique keys, regime label agreement and counts, the transfer-set mean,
    median, positive and harm rate, and each regime's mean, positive and harm rate, each
    within an absolute 1e-9. Columns statistic, expected, got, ok. A table with repeated
    keys or labels that disagree with the keys is refused by :func:`load_results_table`
    before this runs, so those two rows read 0 on every table it accepts.
    """
    df = load_results_table(df)
    transfer = delta_values(transfer_set(df))
    summary = regime_summary(df)
    derived = derive_regime(df)
    stored = df[REGIME].astype(object)
    agree = (stored == derived) | (stored.isna() & derived.isna())
    mismatched = int((~agree).sum())
    regime_counts = df[REGIME].value_counts()
    checks: list[tuple[str, float, float]] = [
        ("rows", PUBLISHED_ROWS, len(df)),
        ("duplicated (model, source, target) keys", 0, int(df.duplicated(list(KEY_COLUMNS)).sum())),
        ("regime labels differing from the derived regime", 0, mismatched),
    ]
    checks += [(f"{regime} rows", count, int(regime_counts.get(regime, 0))) for regime, count in PUBLISHED_REGIME_COUNTS.items()]
    got_transfer = {
        "mean": transfer.mean(),
        "median": transfer.median(),
        "positive rate": positive_rate(transfer),
        "harm rate": harm_rate(transfer),
    }
    checks += [(f"transfer {k}", v, got_transfer[k]) for k, v in PUBLISHED_TRANSFER.items()]
    columns = {"mean": MEAN, "positive rate": POSITIVE, "harm rate": HARM}
    for regime, expected in PUBLISHED_BY_REGIME.items():
        checks += [(f"{regime} {k}", v, summary.loc[regime, columns[k]]) for k, v in expected.items()]
    table = pd.DataFrame(checks, columns=["statistic", "expected", "got"])
    table["ok"] = (table["got"] - table["expected"]).abs() <= PUBLISHED_TOLERANCE
    return table
