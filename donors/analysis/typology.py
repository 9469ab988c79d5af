"""A5: cross-lingual transfer against typological distance (lang2vec / URIEL).

lang2vec ships its URIEL data inside the wheel, so this works offline. Its import takes a
few seconds, so it happens on first use and the features are cached.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import sys
import types
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from donors.analysis.constants import (
    DELTA,
    FAMILY_DISTANCE_CLUSTER,
    FAMILY_DISTANCE_FAMILY,
    FAMILY_DISTANCE_OTHER,
    FAMILY_DISTANCE_SAME,
    ISO_639_3,
    LANGUAGE_CLUSTERS,
    LANGUAGE_FAMILIES,
    SOURCE_LANGUAGE,
    TARGET_LANGUAGE,
    TYPOLOGY_FEATURE_SETS,
)
from donors.analysis.results import same_language, same_task, transfer_set
from donors.errors import InsufficientData

CORRELATION_COLUMNS = ["Metric", "Spearman (Rank)", "p-value", "Pearson (Linear)", "N"]
MIN_LANGUAGE_PAIRS = 3  # fewer, and a rank correlation says nothing


def _resource_shim() -> types.ModuleType:
    """The one ``pkg_resources`` call lang2vec 1.1.2 makes, for setuptools without it."""
    shim = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        origin = importlib.util.find_spec(package).origin
        return os.path.join(os.path.dirname(origin), resource)

    shim.resource_filename = resource_filename
    return shim


class Lang2vecShadowed(ImportError):
    """``import lang2vec`` finds something other than the lang2vec package."""


def _check_lang2vec_is_the_package() -> None:
    """Raise :class:`Lang2vecShadowed` when ``lang2vec`` is not a package, before running it.

    lang2vec installs a script ``lang2vec.py`` into the environment's bin folder; with that
    folder on ``sys.path`` ahead of site-packages (a console script puts it there), ``import
    lang2vec`` would load that script instead, and every language would look unknown.
    """
    module = sys.modules.get("lang2vec")
    if module is not None:
        is_package, origin = hasattr(module, "__path__"), getattr(module, "__file__", None)
    else:
        spec = importlib.util.find_spec("lang2vec")
        if spec is None:
            return  # not installed: the import itself says so
        is_package, origin = spec.submodule_search_locations is not None, spec.origin
    if not is_package:
        raise Lang2vecShadowed(
            f"'import lang2vec' finds the file {origin}, which shadows the lang2vec package: "
            f"its folder {os.path.dirname(origin or '') or '?'} comes before site-packages on "
            "sys.path (as a console script's own folder, or through PYTHONPATH); take it off"
        )


@functools.cache
def _lang2vec() -> types.ModuleType:
    """Import lang2vec, lending it a ``pkg_resources`` only for the import if none exists."""
    _check_lang2vec_is_the_package()
    if importlib.util.find_spec("pkg_resources") is not None:
        import lang2vec.lang2vec as l2v

        return l2v
    sys.modules["pkg_resources"] = _resource_shim()
    try:
        import lang2vec.lang2vec as l2v
    finally:
        del sys.modules["pkg_resources"]
    return l2v


def iso_639_3(language: str, iso_codes: Mapping[str, str] | None = None) -> str | None:
    """The URIEL code for a language, or None when lang2vec has no kNN features for it.

    The published mapping first (zh -> cmn), then lang2vec's own two-letter table, then
    the code itself, in case it already is an ISO 639-3 code. A tag with a region or script
    (``pt-BR``, ``zh_Hant``) that is not known as it is falls back to its language (``pt``, ``zh``).
    """
    codes = {**ISO_639_3, **(iso_codes or {})}
    primary = language.replace("_", "-").split("-")[0].lower()
    for tag in dict.fromkeys([language, primary]):
        code = codes.get(tag) or _lang2vec().LETTER_CODES.get(tag) or tag
        if _has_features(code):
            return code
    return None


@functools.cache
def _features(code: str, feature_set: str) -> np.ndarray:
    vector = _lang2vec().get_features([code], feature_set)[code]
    return np.array([np.nan if v == "--" else float(v) for v in vector])


@functools.cache
def _has_features(code: str) -> bool:
    _lang2vec()  # outside the try: a failed import is an error, not an unknown language
    try:
        for feature_set in TYPOLOGY_FEATURE_SETS.values():
            _features(code, feature_set)
    except Exception as error:
        if type(error) is Exception:  # lang2vec raises a bare Exception for a code it lacks
            return False
        raise
    return True


def typological_distances(languages: Iterable[str], *, iso_codes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Cosine distance between URIEL kNN feature vectors for every ordered language pair.

    Columns src, tgt and one per feature set (Syntax, Phonology, Inventory Distance).
    Languages without a URIEL code are left out, with a warning naming them.
    """
    languages = sorted(set(languages))
    codes = {lang: iso_639_3(lang, iso_codes) for lang in languages}
    unknown = [lang for lang, code in codes.items() if code is None]
    if unknown:
        warnings.warn(
            f"no lang2vec code for {', '.join(unknown)}; left out of the typological distances",
            stacklevel=2,
        )
    known = [lang for lang in languages if codes[lang] is not None]
    records = []
    for src, tgt in itertools.permutations(known, 2):
        record = {"src": src, "tgt": tgt}
        for metric, feature_set in TYPOLOGY_FEATURE_SETS.items():
            u, v = _features(codes[src], feature_set), _features(codes[tgt], feature_set)
            with np.errstate(invalid="ignore", divide="ignore"):
                record[metric] = distance.cosine(u, v)
        records.append(record)
    return pd.DataFrame(records, columns=["src", "tgt", *TYPOLOGY_FEATURE_SETS])


def family_distances(languages: Iterable[str]) -> pd.DataFrame:
    """The published fallback: 0 same language, 0.2 same cluster, 0.5 same family, else 1.

    Not run by the published driver; pass it to :func:`linguistic_correlations` as
    ``distances`` to reproduce that variant.
    """

    def between(a: str, b: str) -> float:
        if a == b:
            return FAMILY_DISTANCE_SAME
        if LANGUAGE_CLUSTERS.get(a) is not None and LANGUAGE_CLUSTERS.get(a) == LANGUAGE_CLUSTERS.get(b):
            return FAMILY_DISTANCE_CLUSTER
        if LANGUAGE_FAMILIES.get(a) is not None and LANGUAGE_FAMILIES.get(a) == LANGUAGE_FAMILIES.get(b):
            return FAMILY_DISTANCE_FAMILY
        return FAMILY_DISTANCE_OTHER

    languages = sorted(set(languages))
    records = [{"src": a, "tgt": b, "Family Distance": between(a, b)} for a, b in itertools.permutations(languages, 2)]
    return pd.DataFrame(records, columns=["src", "tgt", "Family Distance"])


def language_pair_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean Δ per ordered (source, target) language pair over MT-CL rows of T (A5, A14)."""
    rows = transfer_set(df)
    rows = rows[same_task(rows) & ~same_language(rows)]
    means = rows.groupby([SOURCE_LANGUAGE, TARGET_LANGUAGE])[DELTA].mean()
    return means.rename_axis(["src", "tgt"]).rename("delta").reset_index()


def linguistic_correlations(
    df: pd.DataFrame,
    *,
    distances: pd.DataFrame | None = None,
    iso_codes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """A5: Spearman and Pearson correlation of language-pair mean Δ with distance.

    ``distances`` (columns src, tgt and one per metric) defaults to the URIEL distances
    of :func:`typological_distances`. Pairs with a NaN anywhere are dropped, so every
    metric uses the same N. The p-value is Spearman's. Raises :class:`InsufficientData`,
    saying why, when fewer than :data:`MIN_LANGUAGE_PAIRS` pairs remain.
    """
    pairs = language_pair_means(df)
    from_lang2vec = distances is None
    if from_lang2vec:
        distances = typological_distances({*pairs["src"], *pairs["tgt"]}, iso_codes=iso_codes)
    metrics = [c for c in distances.columns if c not in ("src", "tgt")]
    data = pairs.merge(distances, on=["src", "tgt"]).dropna()
    if len(data) < MIN_LANGUAGE_PAIRS:
        raise InsufficientData(_too_few_pairs(pairs, distances, len(data), from_lang2vec))
    records = []
    for metric in metrics:
        with warnings.catch_warnings():
            # A metric whose distances are all equal has no correlation: NaN is the answer.
            warnings.filterwarnings("ignore", message="An input array is constant", category=stats.ConstantInputWarning)
            spearman = stats.spearmanr(data[metric], data["delta"])
            r = stats.pearsonr(data[metric], data["delta"]).statistic
        rho, p_value = spearman.statistic, spearman.pvalue
        records.append([metric, round(rho, 3), round(p_value, 4), round(r, 3), len(data)])
    return pd.DataFrame(records, columns=CORRELATION_COLUMNS)


def _too_few_pairs(pairs: pd.DataFrame, distances: pd.DataFrame, usable: int, from_lang2vec: bool) -> str:
    """Why A5 has fewer than :data:`MIN_LANGUAGE_PAIRS` language pairs to correlate."""
    languages = sorted({*pairs["src"], *pairs["tgt"]})
    reason = f"{usable} language pair(s) with both a mean MT-CL delta and a distance; at least {MIN_LANGUAGE_PAIRS} are needed"
    if not len(pairs):
        return f"{reason} (the table has no MT-CL rows between two languages)"
    placed = {*distances["src"], *distances["tgt"]}
    unknown = [lang for lang in languages if lang not in placed]
    if unknown:
        why = ": languages lang2vec does not know" if from_lang2vec else ""
        reason += f" (no distance for {', '.join(unknown)}{why})"
    return f"{reason}; languages in the table: {', '.join(languages)}"
