"""The published results table: loading, regimes, subsets, shared statistics, saving.

Protocol section 0 fixes the conventions every analysis shares; they live here so the
analyses themselves read as the protocol does.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from donors.analysis.constants import (
    DELTA,
    FAMILY_SUBSTRINGS,
    HARM,
    HARM_THRESHOLD,
    KEY_COLUMNS,
    MEAN,
    MEDIAN,
    MISSING_SOURCE,
    MODEL,
    MT_ML,
    OTHER_FAMILY,
    POSITIVE,
    PUBLISHED_ROWS,
    REGIME,
    REGIMES,
    REQUIRED_COLUMNS,
    SIZE,
    SIZE_LARGE_MIN,
    SIZE_SMALL_MAX,
    SOURCE_LANGUAGE,
    SOURCE_TASK,
    TARGET_LANGUAGE,
    TARGET_TASK,
    N,
)
from donors.errors import MAX_QUOTED, DonorsError, InputNotFound, _quoted
from donors.grid import MAX_FILE_STEM, path_component, regime_labels, size_from_name


class ResultsTableError(DonorsError, ValueError):
    """A results table does not follow the published schema (protocol section 8)."""


FloatParser = Literal["published", "exact"]

_DECIMAL = re.compile(r"\s*([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?\s*")
_SPECIAL = re.compile(r"\s*[+-]?(?:inf|infinity|nan)\s*", re.IGNORECASE)
_MAX_DIGITS = 17
_POWERS_OF_TEN = [float(f"1e{k}") for k in range(309)]


def _decimal_parts(text: str) -> tuple[str, str, str, str] | None:
    """(sign, integer digits, fraction digits, exponent) of a decimal number; None otherwise."""
    match = _DECIMAL.fullmatch(text)
    if match is None or not (match[2] or match[3]):
        return None
    sign, whole, fraction, exponent = match.groups()
    return sign, whole, fraction or "", exponent or "0"


def exact_float(text: str) -> float:
    """A number read from text as the nearest double (``float``; pandas 3's CSV parser).

    Accepts the same text as :func:`published_float` (a decimal number, or inf/nan),
    so that the two parsers differ in rounding only; anything else is a ValueError.
    """
    if _decimal_parts(text) is None and _SPECIAL.fullmatch(text) is None:
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def published_float(text: str) -> float:
    """A number read from text as the release's validator read it, bit for bit.

    The release ran on pandas 2.3.3, whose default CSV float parser (``precise_xstrtod``)
    keeps the first 17 digits (leading zeros count), accumulates them one by one in a
    double, and multiplies or divides by a power of ten. That is not always the nearest
    double: ``-0.9999999999999999`` reads as -1.0 (harm, where the nearest double is not)
    and ``0.000000000000000001`` as 0.0 (not positive). The published section-5 numbers
    were counted on these values. Text that is not a decimal number (inf, nan) and
    exponents past 308, where pandas 2.3.3 gave up, read as :func:`exact_float` does.
    """
    parts = _decimal_parts(text)
    if parts is None:
        return exact_float(text)
    sign, whole, fraction, exponent = parts
    digits = (whole + fraction)[:_MAX_DIGITS]
    scale = int(exponent) + len(whole) - len(digits)
    if scale > 308:
        return exact_float(text)
    number = float(int(digits[:15]))  # exact: below 2**53, as the digit loop's partial sums
    for digit in digits[15:]:
        number = number * 10.0 + (ord(digit) - 48)  # rounds, as the C loop did
    if sign == "-":
        number = -number
    if scale > 0:
        return number * _POWERS_OF_TEN[scale]
    if scale >= -308:
        return number / _POWERS_OF_TEN[-scale]
    if scale >= -616:
        return number / _POWERS_OF_TEN[-308 - scale] / _POWERS_OF_TEN[308]
    return 0.0


FLOAT_PARSERS: dict[str, Callable[[str], float]] = {
    "published": published_float,
    "exact": exact_float,
}
"""How :func:`load_results_table` reads numbers from text, by name."""


def _numbers(values: pd.Series, parse: Callable[[str], float]) -> pd.Series:
    """``values`` as floats, text read by ``parse``; NaN for missing or non-numbers.

    Like ``pd.to_numeric(errors="coerce")``, with the parser chosen.
    """
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return pd.to_numeric(values, errors="coerce")

    def number(value) -> float:
        try:
            return parse(value) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            return np.nan

    items = values.to_numpy(dtype=object)
    return pd.Series([number(v) for v in items], index=values.index, name=values.name, dtype=float)


def load_results_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    expect_full_grid: bool = False,
    float_parser: FloatParser = "published",
) -> pd.DataFrame:
    """Read and check a results table in the published schema (protocol section 0).

    The published loader insists on the nine columns the analyses read and, for the
    release, on exactly 17,424 rows; ``expect_full_grid`` restores that second check,
    which our own, smaller studies do not pass. As in the release, ``n/a`` in a numeric
    column reads as missing, Δ and model_size are made numeric, and no score is
    recomputed. Names are read as written (a language ``NA`` stays ``NA``; only an empty
    cell is missing); ``n/a`` in both source columns marks a base-model row. A missing
    model_size is read off the model's name, as ``donors`` writes it (``Qwen2.5-7B`` -> 7);
    an empty ``regime`` is derived from the keys (section 0).

    ``float_parser`` says how numbers written as text (every numeric column of a CSV,
    Δ and model_size given as strings) become floats. ``"published"`` (the default)
    reads them as the release's validator did (:func:`published_float`), so a CSV of the
    released table gives the published counts: a few of its Δ strings sit an ulp from
    -1 and only that parser puts them on the threshold. ``"exact"`` takes the nearest
    double (:func:`exact_float`). Numbers already in a DataFrame are kept as they are.

    Refused with a :class:`ResultsTableError` that names the file, the row (its line in
    the CSV) or column, and the fix: a file that is empty, binary, not UTF-8 or not a CSV;
    a CSV with a header but no rows; text that is not a number in a numeric column of a
    CSV (a missing value, empty or ``n/a``, is allowed); a Δ that is infinite or beyond
    ±100 pp; and a (model, source, target) key given twice, which the published validator
    counts as an error (docs/protocol.md sections 1b and 5); a row whose model or target
    is missing, whose source is half given, or whose key has spaces around it; and a
    ``regime`` label that disagrees with what the keys imply.
    """
    if float_parser not in FLOAT_PARSERS:
        raise ValueError(f"float_parser must be one of {', '.join(map(repr, FLOAT_PARSERS))}, not {float_parser!r}")
    parse = FLOAT_PARSERS[float_parser]
    if isinstance(path_or_df, pd.DataFrame):
        origin = "the results DataFrame"
        frame, text = path_or_df.copy(), None
    else:
        path = Path(path_or_df)
        origin = str(path)
        if not path.is_file():
            raise InputNotFound(f"results table {origin} does not exist; give a study directory or a results CSV in the published schema")
        frame, text = _read_csv(path, origin)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsTableError(
            f"{origin} is not a results table in the published schema: missing column(s) {', '.join(missing)}; "
            f"its first line must name the columns (protocol section 8), as transfer_results.csv of a study does"
        )
    if text is not None:
        if frame.empty:
            raise ResultsTableError(
                f"{origin} has the columns of a results table but no rows; analyse a table with results in it "
                "(a study's transfer_results.csv is written by `donors report` once the study has scores)"
            )
        # pandas decides which columns are numeric; their values come from the text again,
        # read by the chosen parser rather than by whatever the installed pandas does.
        numeric = [c for c in frame.columns if _is_numeric_column(c) or frame[c].dtype.kind in "fiu"]
        _check_numbers(text, numeric, parse, origin, first_row=2)
        for column in numeric:
            if column in (DELTA, SIZE) or frame[column].dtype.kind == "f":
                frame[column] = _numbers(text[column], parse)
    if expect_full_grid and len(frame) != PUBLISHED_ROWS:
        raise ResultsTableError(
            f"{origin} has {len(frame):,} rows; the published grid has exactly {PUBLISHED_ROWS:,} (9 models x 44 sources x 44 targets)"
        )
    first_row = 2 if text is not None else None
    frame[DELTA] = _numbers(frame[DELTA], parse)
    frame[SIZE] = _numbers(frame[SIZE], parse).fillna(frame[MODEL].map(_size_from_name))
    _check_deltas(frame, origin)
    _check_keys(frame, origin, first_row)
    _check_unique_keys(frame, origin, first_row)
    frame[REGIME] = _checked_regime(frame, origin, first_row)
    return frame


def _size_from_name(name) -> float:
    return size_from_name(name) if isinstance(name, str) else np.nan


def _check_keys(frame: pd.DataFrame, origin: str, first_row: int | None) -> None:
    """Refuse a row whose model or target is missing, whose source is half given, or whose key has spaces around it.

    Such a row would be bucketed as some regime and counted as some language without a word;
    a row without a source at all (both fields missing or ``n/a``) is a base-model row, and allowed.
    """
    problems: list[tuple[int, str]] = []
    for column in (MODEL, TARGET_TASK, TARGET_LANGUAGE):
        blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        problems += [(i, f"column {column} is empty") for i in np.flatnonzero(blank.to_numpy())]
    given = [frame[c].notna() & ~frame[c].astype(str).str.strip().isin(["", MISSING_SOURCE]) for c in (SOURCE_TASK, SOURCE_LANGUAGE)]
    half = (given[0] != given[1]).to_numpy()
    problems += [(i, f"only one of {SOURCE_TASK} and {SOURCE_LANGUAGE} is given") for i in np.flatnonzero(half)]
    for column in KEY_COLUMNS:
        values = frame[column]
        padded = values.notna() & (values.astype(str) != values.astype(str).str.strip()) & (values.astype(str).str.strip() != "")
        problems += [(i, f"column {column} has spaces around {_quoted(values.iat[i])}") for i in np.flatnonzero(padded.to_numpy())]
    if problems:
        problems.sort()
        shown = "; ".join(f"{_row(frame, i, first_row)}: {what}" for i, what in problems[:5])
        raise ResultsTableError(
            f"{origin}: {len(problems)} problem(s) with the key columns ({shown}{'; ...' if len(problems) > 5 else ''}); every row "
            f"names its model, the task and language it was evaluated on, and both {SOURCE_TASK} and {SOURCE_LANGUAGE} (or "
            f"neither, {MISSING_SOURCE!r}, for a base-model row), without spaces around them: fill in or fix those cells"
        )


def _checked_regime(frame: pd.DataFrame, origin: str, first_row: int | None) -> pd.Series:
    """The ``regime`` column, checked against the rule of section 0; an empty label is filled in by the rule.

    Every analysis selects its rows by this column (O is ``regime == "MT-ML"``), so a label that
    disagrees with the keys would move rows between O and T without a word: refused, naming rows.
    """
    derived = derive_regime(frame)
    stored = frame[REGIME].astype(object)
    stored = stored.where(stored.notna() & ~stored.astype(str).str.strip().str.lower().isin(MISSING_TEXT))
    # A base-model row (no source) has no regime; a regime's name on it would put it in O or T.
    wrong = (stored.notna() & (derived.notna() & (stored != derived) | derived.isna() & stored.isin(REGIMES))).to_numpy()
    if wrong.any():
        rows = np.flatnonzero(wrong)
        said = [derived.iat[i] if pd.notna(derived.iat[i]) else "none (the row has no source)" for i in rows[:5]]
        shown = "; ".join(f"{_row(frame, i, first_row)}: {_quoted(stored.iat[i])} where the keys say {s}" for i, s in zip(rows, said))
        raise ResultsTableError(
            f"{origin}: {len(rows)} row(s) have a {REGIME} that is not what their keys imply ({shown}{'; ...' if len(rows) > 5 else ''}); "
            "the label is 2 x same task + same language: MT-ML (same task, same language), MT-CL (same task), CT-ML (same "
            "language), CT-CL (neither), written exactly so (docs/protocol.md section 0). Correct those labels, or leave the "
            f"{REGIME} cells empty to have them derived"
        )
    return stored.fillna(derived)


NUMERIC_COLUMNS = re.compile(r"(model_size|n_seeds|(delta_)?score(_norm)?(_base)?_(mean|std|se))")
"""The published schema's numeric columns (section 8): a value in one of them must be a number or missing."""

MISSING_TEXT = frozenset(
    {"", "n/a", "na", "nan", "-nan", "null", "none", "<na>", "#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "1.#ind", "1.#qnan"}
)
"""Text that stands for a missing value in a number column, in any case (pandas' own list, lower-cased)."""


def _is_numeric_column(column) -> bool:
    return isinstance(column, str) and NUMERIC_COLUMNS.fullmatch(column) is not None


def _read_csv(path: Path, origin: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The CSV at ``path`` as pandas types it and as text, or a :class:`ResultsTableError` saying what the file is instead."""
    advice = "give a results CSV in the published schema (a study's transfer_results.csv), or a study directory"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ResultsTableError(f"{origin} cannot be read ({error.strerror or error}); check its permissions, or {advice}") from None
    if not data.strip():
        raise ResultsTableError(f"{origin} is empty ({len(data)} bytes); {advice}")
    if b"\0" in data[:65536]:
        raise ResultsTableError(f"{origin} is a binary file (it holds NUL bytes), not a CSV text table; {advice}")
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ResultsTableError(
            f"{origin}: line {line} is not UTF-8 text (byte {error.start}: {data[error.start : error.start + 1]!r}); "
            f"save the table as UTF-8 CSV, or {advice}"
        ) from None
    text_columns = (MODEL, SOURCE_TASK, SOURCE_LANGUAGE, TARGET_TASK, TARGET_LANGUAGE, REGIME)
    try:
        frame = pd.read_csv(io.StringIO(content), dtype={c: str for c in text_columns})
        text = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ResultsTableError(f"{origin} has no header line naming the columns; {advice}") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as error:
        message = " ".join(str(error).split())[:MAX_QUOTED]
        raise ResultsTableError(
            f"{origin} is not a CSV table that can be read ({message}); every line must hold as many comma-separated "
            f"fields as the header, text with commas quoted; {advice}"
        ) from None
    # Names as written: only an empty cell is missing ("NA" is Nauruan, "nan" may be a model's name).
    # A row whose two source cells both read as missing (n/a, NA, nan, ...) is a base-model row.
    for column in text_columns:
        if column in frame:
            frame[column] = text[column].where(text[column] != "")
    if SOURCE_TASK in frame and SOURCE_LANGUAGE in frame:
        no_source = np.logical_and.reduce([text[c].str.strip().str.lower().isin(MISSING_TEXT) for c in (SOURCE_TASK, SOURCE_LANGUAGE)])
        frame.loc[no_source, [SOURCE_TASK, SOURCE_LANGUAGE]] = np.nan
    return frame, text


def _check_numbers(frame: pd.DataFrame, columns: Iterable[str], parse: Callable[[str], float], origin: str, first_row: int | None) -> None:
    """Refuse text that is not a number in a numeric column, naming row, column and value; a missing value is allowed."""

    def not_a_number(value) -> bool:
        if not isinstance(value, str) or value.strip().lower() in MISSING_TEXT:
            return False
        try:
            parse(value)
        except (TypeError, ValueError):
            return True
        return False

    bad = []
    for column in columns:
        values = frame[column].to_numpy(dtype=object)
        bad += [(i, column, values[i]) for i in range(len(values)) if not_a_number(values[i])]
    if bad:
        bad.sort(key=lambda item: item[0])
        shown = "; ".join(f"{_row(frame, i, first_row)}, column {column}: {_quoted(value)}" for i, column, value in bad[:5])
        raise ResultsTableError(
            f"{origin}: {len(bad)} value(s) in numeric columns are not numbers ({shown}{'; ...' if len(bad) > 5 else ''}); "
            "write a number there, or leave the cell empty (or n/a) where the value is missing"
        )


def _row(frame: pd.DataFrame, position: int, first_row: int | None) -> str:
    """How a user finds a row: its line in the CSV (the header is line 1), or its index label in a DataFrame."""
    return f"row {position + first_row}" if first_row is not None else f"row {frame.index[position]!r}"


def _check_unique_keys(frame: pd.DataFrame, origin: str, first_row: int | None) -> None:
    """Refuse a (model, source, target) key given twice: the published validator counts it an error (protocol 1b, 5)."""
    keys = list(KEY_COLUMNS)
    repeated = frame.duplicated(keys, keep=False).to_numpy()
    if not repeated.any():
        return
    groups: dict[tuple, list[int]] = {}
    for position in np.flatnonzero(repeated):
        key = tuple("n/a" if pd.isna(v) else str(v) for v in frame[keys].iloc[position])
        groups.setdefault(key, []).append(position)
    shown = "; ".join(
        f"{' and '.join(_row(frame, p, first_row) for p in positions[:4])} are all {key[0]}: {key[1]}/{key[2]} -> {key[3]}/{key[4]}"
        for key, positions in list(groups.items())[:5]
    )
    raise ResultsTableError(
        f"{origin}: {len(groups)} (model, source, target) key(s) appear more than once ({shown}{'; ...' if len(groups) > 5 else ''}); "
        f"each key ({', '.join(keys)}) must appear once, as the published validator requires (docs/protocol.md sections 1b and 5): "
        "drop the repeated rows, or average a key's seeds into one row (section 1c)"
    )


MAX_ABS_DELTA = 100.0
"""A Δ is a difference of two scores in [0, 1], in percentage points: beyond ±100 it is not a Δ."""


def _check_deltas(frame: pd.DataFrame, origin: str) -> None:
    """Refuse a Δ that cannot be one (infinite, or beyond ±100 pp), naming the rows; a missing Δ is skipped, as published."""
    delta = frame[DELTA].to_numpy(float)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(np.isinf(delta) | (np.abs(delta) > MAX_ABS_DELTA))
    if len(bad):
        keys = [c for c in (MODEL, SOURCE_TASK, SOURCE_LANGUAGE, TARGET_TASK, TARGET_LANGUAGE) if c in frame]
        shown = "; ".join(f"row {i + 2}: {'/'.join(str(frame[c].iat[i]) for c in keys)} = {delta[i]}" for i in bad[:5])
        raise ResultsTableError(
            f"{origin}: {len(bad)} row(s) have a {DELTA} that is infinite or beyond ±{MAX_ABS_DELTA:g} pp, which a difference of "
            f"two scores in percentage points cannot be ({shown}{'; ...' if len(bad) > 5 else ''}); fix or drop them"
        )


def has_source(df: pd.DataFrame) -> pd.Series:
    """Rows that name a fine-tuning source (neither field missing nor ``n/a``)."""
    present = pd.Series(True, index=df.index)
    for column in (SOURCE_TASK, SOURCE_LANGUAGE):
        values = df[column]
        present &= values.notna() & (values.astype(str) != MISSING_SOURCE)
    return present


def same_task(df: pd.DataFrame) -> pd.Series:
    return (df[SOURCE_TASK] == df[TARGET_TASK]).fillna(False).astype(bool)


def same_language(df: pd.DataFrame) -> pd.Series:
    return (df[SOURCE_LANGUAGE] == df[TARGET_LANGUAGE]).fillna(False).astype(bool)


def derive_regime(df: pd.DataFrame) -> pd.Series:
    """The regime re-derived from the four key columns by string equality (section 0).

    Rows without a source (base-model rows) stay unlabelled (NaN), as the published
    bucketer refuses them the MT-ML label.
    """
    labels = regime_labels(df[SOURCE_TASK], df[SOURCE_LANGUAGE], df[TARGET_TASK], df[TARGET_LANGUAGE])
    regime = pd.Series(labels, index=df.index, name=REGIME)
    return regime.where(has_source(df))


def on_source_set(df: pd.DataFrame) -> pd.DataFrame:
    """O: the trained cells themselves, ``regime == "MT-ML"`` (section 0)."""
    return df[df[REGIME] == MT_ML]


def transfer_set(df: pd.DataFrame) -> pd.DataFrame:
    """T: every row but the trained cells, ``regime != "MT-ML"`` (section 0).

    Idempotent, so an analysis that receives T may also be handed the full table.
    """
    return df[df[REGIME] != MT_ML]


def with_regime(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose ``regime`` column is re-derived from the keys (the bucketer)."""
    return df.assign(**{REGIME: derive_regime(df)})


def delta_values(df: pd.DataFrame) -> pd.Series:
    """Δ as numbers, NaN dropped: the stored value, never recomputed (section 0)."""
    return pd.to_numeric(df[DELTA], errors="coerce").dropna()


def positive_rate(delta: pd.Series) -> float:
    """100 x share of Δ > 0 (strict) among non-missing values."""
    delta = delta.dropna()
    return 100.0 * float((delta > 0).mean()) if len(delta) else np.nan


def harm_rate(delta: pd.Series) -> float:
    """100 x share of Δ <= -1 (inclusive) among non-missing values."""
    delta = delta.dropna()
    return 100.0 * float((delta <= HARM_THRESHOLD).mean()) if len(delta) else np.nan


def transfer_statistics(delta: pd.Series) -> dict[str, float]:
    """n, mean, median, positive and harm rate of Δ with NaN dropped (A1-A4)."""
    delta = pd.to_numeric(delta, errors="coerce").dropna()
    return {
        N: len(delta),
        MEAN: delta.mean() if len(delta) else np.nan,
        MEDIAN: delta.median() if len(delta) else np.nan,
        POSITIVE: positive_rate(delta),
        HARM: harm_rate(delta),
    }


def model_family(name: str) -> str:
    """Family by lowercase substring: Llama, Qwen, Gemma or Other (A3, A6)."""
    lowered = str(name).lower()
    for needle, family in FAMILY_SUBSTRINGS.items():
        if needle in lowered:
            return family
    return OTHER_FAMILY


def size_bucket(size: float) -> str | float:
    """S for <= 1.5B, M for < 7B, L otherwise; NaN when the size is unknown (A3, A6)."""
    if pd.isna(size):
        return np.nan
    if size <= SIZE_SMALL_MAX:
        return "S"
    return "M" if size < SIZE_LARGE_MIN else "L"


def ordered_names(names: Iterable[str], preferred: Iterable[str]) -> list[str]:
    """The names in ``preferred`` order first, then any others sorted (A13, A14)."""
    present = {n for n in names if pd.notna(n)}
    head = [n for n in preferred if n in present]
    return head + sorted(present.difference(head))


def two_stage_mean(rows: pd.DataFrame, key: str) -> pd.Series:
    """Mean over models of each model's mean Δ per key (A9, A12): models weigh equally.

    A model contributes to a key when it has at least one non-missing Δ there.
    """
    per_model = rows.groupby([key, MODEL])[DELTA].mean().dropna()
    return per_model.groupby(level=key).mean()


def role_scores(rows: pd.DataFrame, donor_key: str, recipient_key: str, name: str) -> pd.DataFrame:
    """Donor and recipient two-stage means, outer-merged on the key (A9, A11, A12)."""
    donor = two_stage_mean(rows, donor_key).rename_axis(name).rename("donor")
    recipient = two_stage_mean(rows, recipient_key).rename_axis(name).rename("recipient")
    merged = pd.concat([donor, recipient], axis=1).sort_index()
    return merged.rename_axis(name).reset_index()


def table_for_csv(table: pd.DataFrame) -> pd.DataFrame:
    """The saving rule of section 0: index levels become columns unless it is a RangeIndex.

    A MultiIndex is written out as its named columns; a plain index becomes a column
    named after the index, or ``row`` if it has no name.
    """
    if isinstance(table.index, pd.MultiIndex):
        return table.reset_index()
    if isinstance(table.index, pd.RangeIndex):
        return table
    return table.rename_axis(table.index.name or "row").reset_index()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet runs a cell that starts with one of these as a formula (CSV injection)."""


def _inert(value):
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` by the saving rule of section 0, every text cell a spreadsheet would execute made inert.

    Text (a task, model or language name from the user's data) that starts with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return gets a leading ``'``, as OWASP advises; numeric
    columns are written as they are, so a negative Δ stays a number.
    """
    frame = table_for_csv(table).copy()
    for position, column in enumerate(frame.columns):
        values = frame.iloc[:, position]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            frame.iloc[:, position] = values.map(_inert)
    frame.columns = [_inert(c) for c in frame.columns]
    frame.to_csv(path, index=False)
    return Path(path)


def save_tables(tables: Mapping[str, pd.DataFrame], directory: str | os.PathLike) -> list[Path]:
    """Write each table as ``<directory>/<name>.csv`` (:func:`write_csv`); return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [write_csv(table, directory / f"{path_component(name, MAX_FILE_STEM)}.csv") for name, table in tables.items()]
