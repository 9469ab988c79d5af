"""Item-level statistics of transfer: paired bootstrap intervals, paired tests, asymmetry.

A study run by this tool stores every item's prediction, so a pair's transfer can be
compared item by item with the base model on the same test items, rather than as two
independent accuracies. The input is :func:`donors.analysis.metrics.item_scores`: one
row per (model state, target, item) with columns model, seed, source_task,
source_language, target_task, target_language, item_id and score (the item's score in
[0, 1] under the chosen metric: 0/1 for accuracy, a probability for gold_prob); base-model
rows have no source and no seed, and are shared by every seed of that model.

Δ here is 100 x (fine-tuned score - base score) on the stored predictions, in percentage
points, averaged over seeds: under the same metric, the transfer matrix's Δ.

Conventions shared by every function here:

* the per-item difference of a pair is d_i = (mean over seeds of the fine-tuned
  score of item i) - (base score of item i), so Δ = 100 x mean_i d_i is the
  seed-averaged Δ;
* uncertainty is over test items only: the seeds run are taken as given (seed-to-seed
  spread is the results table's ``delta_score_norm_std``). Resampling three or five
  seeds would say little, and items are where a small test set is noisy.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from donors.analysis.constants import MODEL, MT_ML, REGIME
from donors.grid import regime_labels

PAIR_KEYS = ["model", "source_task", "source_language", "target_task", "target_language"]
OUTCOME_COLUMNS = [*PAIR_KEYS, "seed", "item_id", "score"]
EXACT_TEST_MAX_CHANGED = 24
"""Up to this many changed items a pair gets the exact test (McNemar's rule: b + c < 25)."""


def _regime(pairs: pd.DataFrame) -> pd.Series:
    labels = regime_labels(pairs["source_task"], pairs["source_language"], pairs["target_task"], pairs["target_language"])
    return pd.Series(labels, index=pairs.index, name=REGIME)


@dataclass(frozen=True)
class _TaskBlock:
    """One model's pairs on one target task, over that task's item ids (aligned across languages).

    ``gain`` is, per pair and item, the fine-tuned scores summed over seeds minus ``seeds``
    x the base score (an integer for 0/1 scores); ``seeds`` counts the seeds that scored
    the item, 0 where the item or its base outcome is missing.
    """

    model: str
    task: str
    pairs: pd.DataFrame
    gain: np.ndarray
    seeds: np.ndarray

    @property
    def difference(self) -> np.ndarray:
        """d_i: the seed-averaged per-item difference, 0 where the item is absent."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seeds > 0, self.gain / self.seeds, 0.0)

    @property
    def present(self) -> np.ndarray:
        return (self.seeds > 0).astype(float)


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes in the sorted order of the values (-1 where missing), and the values."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _counts(rows: np.ndarray, items: np.ndarray, n_rows: int, n_items: int, weights=None) -> np.ndarray:
    flat = np.bincount(rows * n_items + items, weights=weights, minlength=n_rows * n_items)
    return flat.reshape(n_rows, n_items)


def _task_blocks(outcomes: pd.DataFrame) -> list[_TaskBlock]:
    """Per (model, target task): every pair's per-item gains, from integer codes and bincount.

    A study has millions of item outcomes, so nothing here loops over pairs or rows.
    """
    missing = [c for c in OUTCOME_COLUMNS if c not in outcomes.columns]
    if missing:
        raise ValueError(f"item outcomes lack column(s) {missing}; expected donors.analysis.metrics.item_scores()")
    correct = pd.to_numeric(outcomes["score"], errors="raise").to_numpy(float)
    model, models = _codes(outcomes["model"])
    task, tasks = _codes(outcomes["target_task"])
    language, languages = _codes(outcomes["target_language"])
    source_task, source_tasks = _codes(outcomes["source_task"])
    source_language, source_languages = _codes(outcomes["source_language"])
    item, _ = _codes(outcomes["item_id"])
    seed, seed_values = _codes(outcomes["seed"])
    is_base = source_task < 0

    block = model * len(tasks) + task
    order = np.argsort(block, kind="stable")
    keys = np.unique(block[~is_base])
    starts, ends = np.searchsorted(block[order], keys, "left"), np.searchsorted(block[order], keys, "right")
    n_languages, n_source_languages = len(languages), len(source_languages)
    blocks = []
    for key, start, end in zip(keys, starts, ends):
        rows = order[start:end]
        tuned_rows, base_rows = rows[~is_base[rows]], rows[is_base[rows]]
        pair_key = (source_task[tuned_rows] * n_source_languages + source_language[tuned_rows]) * n_languages + language[tuned_rows]
        pair_keys, pair_codes = np.unique(pair_key, return_inverse=True)
        source_part, target_language = np.divmod(pair_keys, n_languages)
        pair_source_task, pair_source_language = np.divmod(source_part, n_source_languages)
        pairs = pd.DataFrame(
            {
                "model": models[key // len(tasks)],
                "source_task": source_tasks[pair_source_task],
                "source_language": source_languages[pair_source_language],
                "target_task": tasks[key % len(tasks)],
                "target_language": languages[target_language],
            }
        )
        items = np.unique(item[rows])
        item_codes = np.searchsorted(items, item[tuned_rows])
        n_pairs, n_items = len(pairs), len(items)
        tuned = _counts(pair_codes, item_codes, n_pairs, n_items, correct[tuned_rows])
        seeds = _counts(pair_codes, item_codes, n_pairs, n_items)

        target_languages = np.unique(target_language)
        base_rows = base_rows[np.isin(language[base_rows], target_languages)]
        base_codes = np.searchsorted(target_languages, language[base_rows])
        base_items = np.searchsorted(items, item[base_rows])
        base_sum = _counts(base_codes, base_items, len(target_languages), n_items, correct[base_rows])
        base_n = _counts(base_codes, base_items, len(target_languages), n_items)
        with np.errstate(invalid="ignore", divide="ignore"):
            base_accuracy = (base_sum / base_n)[np.searchsorted(target_languages, target_language)]
        scored = (seeds > 0) & np.isfinite(base_accuracy)
        seeds = np.where(scored, seeds, 0.0)
        gain = np.where(scored, tuned - seeds * np.nan_to_num(base_accuracy), 0.0)

        seen = np.unique(pair_codes * (len(seed_values) + 1) + seed[tuned_rows] + 1)
        pairs["n_items"] = (seeds > 0).sum(axis=1)
        pairs["n_seeds"] = np.bincount(seen // (len(seed_values) + 1), minlength=n_pairs)
        blocks.append(_TaskBlock(str(pairs["model"].iat[0]), str(pairs["target_task"].iat[0]), pairs, gain, seeds))
    return blocks


def _delta(block: _TaskBlock) -> np.ndarray:
    """Δ in pp, rounded at 1e-10 so that float noise in seed averages never shows as -0.0."""
    n_items = block.present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.round(100.0 * block.difference.sum(axis=1) / n_items, 10) + 0.0


def _block_generator(seed: int, model: str, task: str) -> np.random.Generator:
    """A stream per (model, task) from ``seed``: a block's resamples do not depend on what else is in the table."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(f"{model}\0{task}".encode())]))


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if replicates.size == 0:
        empty = np.full(len(replicates), np.nan)
        return empty, empty
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=1)
    gaps = np.flatnonzero(np.isnan(replicates).any(axis=1) & ~np.isnan(replicates).all(axis=1))
    if len(gaps):
        low[gaps], high[gaps] = np.nanquantile(replicates[gaps], [tail, 1 - tail], axis=1)
    return np.round(low, 10) + 0.0, np.round(high, 10) + 0.0


@dataclass(frozen=True)
class PairedBootstrap:
    """Each pair's Δ and its bootstrap replicates (rows aligned), to derive any interval from.

    ``pairs`` has the pair keys, regime, delta, n_items and n_seeds; ``replicates`` is
    pairs x n_boot, in pp. Differences of pairs (asymmetry) use the same replicates, so
    they share the resampled items.
    """

    pairs: pd.DataFrame
    replicates: np.ndarray

    def intervals(self, level: float = 0.95) -> pd.DataFrame:
        """The pairs with the percentile interval ``ci_low``, ``ci_high`` at ``level``."""
        low, high = _percentile_interval(self.replicates, level)
        table = self.pairs.copy()
        position = table.columns.get_loc("delta") + 1
        table.insert(position, "ci_low", low)
        table.insert(position + 1, "ci_high", high)
        return table


def paired_bootstrap(outcomes: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> PairedBootstrap:
    """Paired bootstrap over test items of every pair's Δ.

    Each replicate resamples a task's item ids with replacement once and applies the
    draw jointly to the base and fine-tuned outcomes (the pairing), to every seed (seeds
    share the test set, so the same ids) and to every language of the task (items are
    aligned by id, so the pairs of one task in two languages are resampled consistently). Seeds are
    not resampled (see the module note). The draw is a multinomial count matrix, items x
    replicates, so every pair of a task is one matrix product: Δ* = Σ w_i d_i / Σ w_i over
    the target's items (exactly the multinomial bootstrap when, as in a study of this
    tool, every language of a task has the same items). Reproducible from ``seed``.
    """
    return _bootstrap(_task_blocks(outcomes), n_boot, seed)


def _bootstrap(blocks: list[_TaskBlock], n_boot: int, seed: int) -> PairedBootstrap:
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    frames, replicates = [], []
    for block in blocks:
        n_items = block.gain.shape[1]
        draws = _block_generator(seed, block.model, block.task).multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot)
        weights = draws.T.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates.append(100.0 * (block.difference @ weights) / (block.present @ weights))
        pairs = block.pairs.copy()
        pairs.insert(len(PAIR_KEYS), REGIME, _regime(pairs).to_numpy())
        pairs.insert(len(PAIR_KEYS) + 1, "delta", _delta(block))
        frames.append(pairs)
    if not frames:
        columns = [*PAIR_KEYS, REGIME, "delta", "n_items", "n_seeds"]
        return PairedBootstrap(pd.DataFrame(columns=columns), np.empty((0, n_boot)))
    pairs = pd.concat(frames, ignore_index=True)
    order = pairs.sort_values(PAIR_KEYS, kind="stable").index.to_numpy()
    return PairedBootstrap(pairs.loc[order].reset_index(drop=True), np.vstack(replicates)[order])


def paired_bootstrap_deltas(outcomes: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per pair: Δ (pp) with its paired-bootstrap percentile interval; see :func:`paired_bootstrap`.

    Columns model, source_task, source_language, target_task, target_language, regime,
    delta, ci_low, ci_high, n_items, n_seeds.
    """
    return paired_bootstrap(outcomes, n_boot=n_boot, seed=seed).intervals(level)


def _null_distribution(magnitude_counts: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Exact sign-flip null of Σ ±k over items of magnitude k: support and probabilities.

    Items of magnitude k contribute k (2 X_k - m_k) with X_k ~ Binomial(m_k, 1/2).
    """
    pmf = np.ones(1)
    for magnitude, count in enumerate(magnitude_counts):
        if magnitude == 0 or count == 0:
            continue
        spread = np.zeros(2 * magnitude * count + 1)
        spread[:: 2 * magnitude] = stats.binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = np.convolve(pmf, spread)
    half = (len(pmf) - 1) // 2
    return np.arange(-half, half + 1), pmf


def _sign_flip_p_values(gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p of the paired sign-flip test of Σ gain_i = 0, and whether it was exact.

    For integer gains (0/1 scores): the exact null when at most :data:`EXACT_TEST_MAX_CHANGED`
    items changed, otherwise the normal approximation (|T| - g)² / Σ gain_i² ~ χ²(1), g (the gcd of the gains) being
    the continuity correction: half the step between attainable values of T. With one
    seed the gains are ±1 and this is McNemar's test as statsmodels computes it (T = b - c,
    Σ gain² = b + c, exact binomial below 25 discordant pairs), except that b = c gives
    p = 1 in the χ² branch too; repeating one seed's outcomes three times leaves p unchanged.
    Rows with non-integer gains get the normal approximation T² / Σ gain_i² ~ χ²(1).
    """
    integral = np.isclose(gain, np.rint(gain)).all(axis=1)
    if not integral.all():
        # Continuous scores (gold_prob) or fractional ties: the sign-flip test's normal limit.
        p_values, exact = np.ones(len(gain)), np.zeros(len(gain), dtype=bool)
        p_values[integral], exact[integral] = _sign_flip_p_values(gain[integral])
        rest = gain[~integral]
        with np.errstate(invalid="ignore", divide="ignore"):
            statistic = rest.sum(axis=1) ** 2 / (rest**2).sum(axis=1)
        p_values[~integral] = np.where(np.isfinite(statistic), stats.chi2.sf(statistic, 1), 1.0)
        return p_values, exact
    gain = np.rint(gain).astype(np.int64)
    total = gain.sum(axis=1)
    variance = (gain**2).sum(axis=1)
    changed = (gain != 0).sum(axis=1)
    step = np.gcd.reduce(np.abs(gain), axis=1) if gain.shape[1] else np.zeros(len(gain), dtype=np.int64)
    exact = changed <= EXACT_TEST_MAX_CHANGED
    p_values = np.ones(len(gain))
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = np.maximum(np.abs(total) - step, 0) ** 2 / variance
    normal = ~exact
    p_values[normal] = stats.chi2.sf(statistic[normal], 1)

    rows = np.flatnonzero(exact & (changed > 0))
    if len(rows):
        magnitudes = np.abs(gain[rows])
        largest = int(magnitudes.max())
        by_magnitude = np.stack([(magnitudes == k).sum(axis=1) for k in range(largest + 1)], axis=1)
        by_magnitude[:, 0] = 0
        keys = np.column_stack([by_magnitude, np.abs(total[rows])])
        unique_keys, inverse = np.unique(keys, axis=0, return_inverse=True)
        unique_p = np.empty(len(unique_keys))
        for position, key in enumerate(unique_keys):
            support, pmf = _null_distribution(tuple(int(k) for k in key[:-1]))
            unique_p[position] = min(1.0, pmf[np.abs(support) >= key[-1]].sum())
        p_values[rows] = unique_p[inverse.ravel()]
    return p_values, exact


def benjamini_hochberg(p_values: pd.Series, groups: pd.Series) -> pd.Series:
    """BH q-values (statsmodels ``fdr_bh``) within each group; missing p stays missing."""
    q_values = pd.Series(np.nan, index=p_values.index, dtype=float)
    finite = p_values.notna()
    for _, index in p_values[finite].groupby(groups[finite]).groups.items():
        q_values.loc[index] = multipletests(p_values.loc[index].to_numpy(float), method="fdr_bh")[1]
    return q_values


def paired_significance(outcomes: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per pair: a paired test of Δ = 0 over items, with Benjamini-Hochberg across a model's pairs.

    The test is the paired sign-flip (permutation) test on the per-item gain, summed
    over seeds: under no effect each item's gain is as likely to be negative as
    positive. It is computed, not sampled: its exact null when at most 24 items changed,
    else a continuity-corrected χ²(1). With one seed this is McNemar's test (exact
    binomial for b + c < 25, χ² with continuity otherwise); with several it uses each
    item once, with its seed-averaged difference, so the repeated seeds of one item are
    not counted as independent pairs (pooling McNemar tables over seeds would be).

    The q-values control the false discovery rate over all pairs of each model (the
    trained cells included); ``significant`` is q < ``alpha``. Columns: the pair keys,
    regime, delta, n_items, n_seeds, n_improved and n_worsened (items whose
    seed-averaged correctness rose or fell: McNemar's b and c with one seed), test
    ("exact" or "chi-square"), p_value, q_value, significant.
    """
    return _significance(_task_blocks(outcomes), alpha)


def _significance(blocks: list[_TaskBlock], alpha: float) -> pd.DataFrame:
    frames = []
    for block in blocks:
        p_values, exact = _sign_flip_p_values(block.gain)
        pairs = block.pairs.copy()
        pairs.insert(len(PAIR_KEYS), REGIME, _regime(pairs).to_numpy())
        pairs.insert(len(PAIR_KEYS) + 1, "delta", _delta(block))
        pairs["n_improved"] = (block.gain > 0).sum(axis=1)
        pairs["n_worsened"] = (block.gain < 0).sum(axis=1)
        pairs["test"] = np.where(exact, "exact", "chi-square")
        pairs["p_value"] = np.where(pairs["n_items"] > 0, p_values, np.nan)
        frames.append(pairs)
    columns = [*PAIR_KEYS, REGIME, "delta", "n_items", "n_seeds", "n_improved", "n_worsened", "test", "p_value", "q_value", "significant"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True).sort_values(PAIR_KEYS, kind="stable", ignore_index=True)
    table["q_value"] = benjamini_hochberg(table["p_value"], table["model"])
    table["significant"] = table["q_value"] < alpha
    return table[columns]


def _cell_name(task: pd.Series, language: pd.Series) -> pd.Series:
    return task.astype(str) + "/" + language.astype(str)


def transfer_asymmetry(bootstrap: PairedBootstrap, level: float = 0.95) -> pd.DataFrame:
    """For each two cells A ≠ B, each trained on and evaluated on the other: Δ(A→B) − Δ(B→A).

    The interval is the percentile interval of the difference of the two directions'
    bootstrap replicates, so both directions share the resampled items (and, for two
    languages of one task, the same item ids). A and B are in name order; a positive
    asymmetry means A gives B more than it gets back. Columns model, cell_a, cell_b,
    regime, a_to_b, b_to_a, asymmetry, ci_low, ci_high, excludes_zero.
    """
    columns = ["model", "cell_a", "cell_b", REGIME, "a_to_b", "b_to_a", "asymmetry", "ci_low", "ci_high", "excludes_zero"]
    pairs = bootstrap.pairs
    named = pd.DataFrame(
        {
            "model": pairs["model"],
            "source": _cell_name(pairs["source_task"], pairs["source_language"]),
            "target": _cell_name(pairs["target_task"], pairs["target_language"]),
            REGIME: pairs[REGIME],
            "delta": pairs["delta"],
            "row": np.arange(len(pairs)),
        }
    )
    forward = named[named["source"] < named["target"]]
    backward = named.rename(columns={"source": "target", "target": "source"})[["model", "source", "target", "delta", "row"]]
    pairs = forward.merge(backward, on=["model", "source", "target"], suffixes=("", "_back"))
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    difference = bootstrap.replicates[pairs["row"].to_numpy()] - bootstrap.replicates[pairs["row_back"].to_numpy()]
    low, high = _percentile_interval(difference, level)
    table = pd.DataFrame(
        {
            "model": pairs["model"].to_numpy(),
            "cell_a": pairs["source"].to_numpy(),
            "cell_b": pairs["target"].to_numpy(),
            REGIME: pairs[REGIME].to_numpy(),
            "a_to_b": pairs["delta"].to_numpy(),
            "b_to_a": pairs["delta_back"].to_numpy(),
        }
    )
    table["asymmetry"] = table["a_to_b"] - table["b_to_a"]
    table["ci_low"], table["ci_high"] = low, high
    table["excludes_zero"] = (low > 0) | (high < 0)
    return table.sort_values(["model", "cell_a", "cell_b"], ignore_index=True)[columns]


def most_asymmetric_pairs(asymmetry: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The ``top`` pairs of each model by |asymmetry|, turned so that A→B is the larger direction."""
    if asymmetry.empty:
        return asymmetry.copy()
    table = asymmetry.copy()
    flip = table["asymmetry"] < 0
    swapped = {"cell_a": "cell_b", "cell_b": "cell_a", "a_to_b": "b_to_a", "b_to_a": "a_to_b"}
    for column, other in swapped.items():
        table.loc[flip, column] = asymmetry.loc[flip, other]
    table.loc[flip, "asymmetry"] = -asymmetry.loc[flip, "asymmetry"]
    table.loc[flip, "ci_low"] = 0.0 - asymmetry.loc[flip, "ci_high"]
    table.loc[flip, "ci_high"] = 0.0 - asymmetry.loc[flip, "ci_low"]
    table = table.sort_values(["model", "asymmetry"], ascending=[True, False], kind="stable")
    return table.groupby("model", sort=True).head(top).reset_index(drop=True)


def regime_summary_by_model(results: pd.DataFrame) -> pd.DataFrame:
    """The regime summary (A2) of each model on its own, indexed by (model_name, bucket).

    Pooling pairs over models can reverse a comparison that holds within every model
    (when models contribute different numbers of pairs to each regime), so the pooled
    table should be read after this one.
    """
    from donors.analysis.published import regime_summary
    from donors.analysis.results import load_results_table

    results = load_results_table(results)
    frames = {model: regime_summary(results[results[MODEL] == model]) for model in sorted(results[MODEL].dropna().unique())}
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, names=[MODEL])


def paired_statistics(
    outcomes: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[PairedBootstrap, pd.DataFrame]:
    """The bootstrap (:func:`paired_bootstrap`) and the tests (:func:`paired_significance`) from one pass over the outcomes."""
    blocks = _task_blocks(outcomes)
    return _bootstrap(blocks, n_boot, seed), _significance(blocks, alpha)


def item_level_tables(
    outcomes: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95, alpha: float = 0.05, top: int = 10
) -> dict[str, pd.DataFrame]:
    """Every item-level table of a study, keyed by its stable name (empty when nothing is adapted yet).

    ``transfer_pairs``: every pair with its bootstrap interval, test and q-value;
    ``significant_transfers``: the transfer pairs (MT-ML excluded) with q < ``alpha``;
    ``transfer_asymmetry`` and ``most_asymmetric_pairs``: see :func:`transfer_asymmetry`.
    """
    bootstrap, tested = paired_statistics(outcomes, n_boot=n_boot, seed=seed, alpha=alpha)
    return paired_tables(bootstrap, tested, level=level, top=top)


def paired_tables(bootstrap: PairedBootstrap, tested: pd.DataFrame, *, level: float = 0.95, top: int = 10) -> dict[str, pd.DataFrame]:
    """:func:`item_level_tables` from statistics already computed by :func:`paired_statistics`."""
    if bootstrap.pairs.empty:
        return {}
    extra = ["n_improved", "n_worsened", "test", "p_value", "q_value", "significant"]
    pairs = bootstrap.intervals(level).merge(tested[PAIR_KEYS + extra], on=PAIR_KEYS, how="left", validate="one_to_one")
    significant = pairs[pairs["significant"].fillna(False).astype(bool) & (pairs[REGIME] != MT_ML)]
    asymmetry = transfer_asymmetry(bootstrap, level=level)
    return {
        "transfer_pairs": pairs,
        "significant_transfers": significant.sort_values(["model", "q_value", "delta"], ascending=[True, True, False], ignore_index=True),
        "transfer_asymmetry": asymmetry,
        "most_asymmetric_pairs": most_asymmetric_pairs(asymmetry, top=top),
    }
