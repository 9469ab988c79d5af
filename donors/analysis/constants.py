"""Every constant the published analyses use, in one place (protocol sections 0, 2, 3, 5).

The published axis orders, language groups and ISO codes are defaults: they apply to the
names they list, and any other task or language falls back to a documented rule.
"""

from __future__ import annotations

from donors.grid import Regime

# Columns of the published results table (section 8).
MODEL = "model_name"
SIZE = "model_size"
SOURCE_TASK = "fine_tuned_dataset"
SOURCE_LANGUAGE = "fine_tuned_language"
TARGET_TASK = "eval_dataset"
TARGET_LANGUAGE = "eval_language"
REGIME = "regime"
DELTA = "delta_score_norm_mean"
N_SEEDS = "n_seeds"

KEY_COLUMNS = (MODEL, SOURCE_TASK, SOURCE_LANGUAGE, TARGET_TASK, TARGET_LANGUAGE)
PUBLISHED_NAMES = {
    "model": MODEL,
    "source_task": SOURCE_TASK,
    "source_language": SOURCE_LANGUAGE,
    "target_task": TARGET_TASK,
    "target_language": TARGET_LANGUAGE,
}
"""Our names of a pair's keys (the store, ``transfer_pairs``) -> the published schema's."""
REQUIRED_COLUMNS = (
    MODEL,
    SIZE,
    SOURCE_TASK,
    SOURCE_LANGUAGE,
    TARGET_TASK,
    TARGET_LANGUAGE,
    REGIME,
    DELTA,
    N_SEEDS,
)
MISSING_SOURCE = "n/a"
"""How a base-model row marks its (absent) fine-tuning source."""

# Regimes (section 0).
MT_ML, MT_CL, CT_ML, CT_CL = (r.value for r in (Regime.MT_ML, Regime.MT_CL, Regime.CT_ML, Regime.CT_CL))
REGIMES = (MT_ML, MT_CL, CT_ML, CT_CL)
TRANSFER_REGIMES = (MT_CL, CT_ML, CT_CL)

# Thresholds (section 3).
HARM_THRESHOLD = -1.0
"""A row is harmful when delta <= this (inclusive); it is positive when delta > 0 (strict)."""
ROUND_DECIMALS = 4
PARETO_MIN_ON = 3
PARETO_MIN_OFF = 5
CONSISTENCY_MIN_RECIPIENTS = 3
CONSISTENCY_MIN_UNITS = 2
CONSISTENCY_MIN_SHARED = 3
VARIANCE_MIN_ROWS = 50

# Statistic column names shared by A1-A4.
N = "n"
MEAN = "mean_delta"
MEDIAN = "median_delta"
POSITIVE = "positive_transfer_rate_pct"
HARM = "harm_rate_pct"
SUMMARY_COLUMNS = (N, MEAN, MEDIAN, POSITIVE, HARM)

# Model annotations (A3, A6): size buckets S <= 1.5B < M < 7B <= L, family by substring.
SIZE_SMALL_MAX = 1.5
SIZE_LARGE_MIN = 7.0
FAMILY_SUBSTRINGS = {"llama": "Llama", "qwen": "Qwen", "gemma": "Gemma"}
OTHER_FAMILY = "Other"

# Datasets (A4, A11, A15): only Global-MMLU is human-translated ("curated").
CURATED_DATASETS = frozenset({"global_mmlu"})
HUMAN_TRANSLATED = "human-translated"
MACHINE_TRANSLATED = "machine-translated"

# Axis orders (A13, A14); names not listed follow in sorted order.
TASK_AXIS_ORDER = ("arc_challenge", "truthfulqa", "hellaswag", "global_mmlu")

# Language groups (A10); a language not listed forms a group of its own.
LANGUAGE_GROUPS = {
    "fr": "Romance",
    "es": "Romance",
    "pt": "Romance",
    "it": "Romance",
    "de": "Germanic",
    "en": "Germanic",
    "hi": "Indic",
    "bn": "Indic",
    "zh": "Chinese",
    "ar": "Arabic",
    "id": "Indonesian",
}

# Typology (A5): ISO 639-3 codes for lang2vec; note zh -> cmn (Mandarin), not zho.
ISO_639_3 = {
    "ar": "ara",
    "bn": "ben",
    "de": "deu",
    "en": "eng",
    "es": "spa",
    "fr": "fra",
    "hi": "hin",
    "id": "ind",
    "it": "ita",
    "pt": "por",
    "zh": "cmn",
}
TYPOLOGY_FEATURE_SETS = {
    "Syntax Distance": "syntax_knn",
    "Phonology Distance": "phonology_knn",
    "Inventory Distance": "inventory_knn",
}
# The fallback family distance of A5 (not run by the published driver).
LANGUAGE_CLUSTERS = {
    "es": "Romance",
    "fr": "Romance",
    "it": "Romance",
    "pt": "Romance",
    "en": "Germanic",
    "de": "Germanic",
    "hi": "Indo-Aryan",
    "bn": "Indo-Aryan",
}
LANGUAGE_FAMILIES = {lang: "Indo-European" for lang in LANGUAGE_CLUSTERS}
FAMILY_DISTANCE_SAME, FAMILY_DISTANCE_CLUSTER, FAMILY_DISTANCE_FAMILY, FAMILY_DISTANCE_OTHER = (
    0.0,
    0.2,
    0.5,
    1.0,
)

# Variance decomposition (A15).
VARIANCE_SEPARATOR = "⟂"
VARIANCE_ROWS = ("Model", "Source", "Target", "Residual")
OVERALL = "Overall"

# Consistency index (A16): model units by family use these name patterns.
CONSISTENCY_LLAMA3_PATTERN = r"llama-3(\.\d+)?"
CONSISTENCY_LLAMA3_FAMILY = "Llama-3"
CONSISTENCY_PREFIX_PATTERN = r"^(.*?)-\d+(?:\.\d+)?b\b"
CONSISTENCY_RECIPIENT_SEPARATOR = "::"

# The published grid and the values its release validator asserts (sections 0 and 5).
PUBLISHED_ROWS = 17_424
PUBLISHED_TOLERANCE = 1e-9
PUBLISHED_REGIME_COUNTS = {MT_ML: 396, MT_CL: 3960, CT_ML: 1188, CT_CL: 11880}
PUBLISHED_TRANSFER = {
    "mean": 0.8935821392216741,
    "median": 0.2499999999999983,
    "positive rate": 59.67817712003759,
    "harm rate": 9.085036410617805,
}
PUBLISHED_BY_REGIME = {
    MT_ML: {"mean": 2.0202020202020203, "positive rate": 68.18181818181817, "harm rate": 9.343434343434344},
    MT_CL: {"mean": 1.2464646464646463, "positive rate": 66.41414141414141, "harm rate": 7.121212121212121},
    CT_ML: {"mean": 0.8077300785634120, "positive rate": 56.90235690235690, "harm rate": 11.363636363636363},
    CT_CL: {"mean": 0.7845398428731761, "positive rate": 57.71043771043771, "harm rate": 9.511784511784512},
}
