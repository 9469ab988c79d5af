"""Analyses of transfer results: pure functions from results tables to tables.

The published study's sixteen analyses (A1-A16 of the protocol) work on a results table
in the published schema of any grid; :func:`run_published_analyses` runs them all and
:func:`save_tables` writes them as the release does. Figures of these tables live in
:mod:`donors.report.figures`; nothing here imports matplotlib.
"""

from donors.analysis.consistency import (
    consistency_by_family,
    consistency_by_model,
    consistency_by_size,
    consistency_family,
    consistency_index,
    consistency_summary,
    kendall_tau_b,
)
from donors.analysis.published import (
    check_published_values,
    construction_type,
    curated_vs_translated_donor_correlation,
    global_uplift,
    language_donor_recipient,
    language_group,
    language_roles,
    language_roles_by_family,
    language_transfer_matrix,
    mtcl_by_construction_type,
    mtcl_harm_breakdown,
    pareto_family_summary,
    pareto_profiles,
    published_analyses,
    regime_summary,
    run_published_analyses,
    task_donor_recipient,
    task_on_off_summary,
    task_transfer_matrix,
)
from donors.analysis.results import (
    ResultsTableError,
    derive_regime,
    harm_rate,
    load_results_table,
    on_source_set,
    positive_rate,
    save_tables,
    transfer_set,
    transfer_statistics,
    two_stage_mean,
)
from donors.analysis.typology import (
    family_distances,
    language_pair_means,
    linguistic_correlations,
    typological_distances,
)
from donors.analysis.variance import variance_components, variance_decomposition, variance_shares

__all__ = [
    "ResultsTableError",
    "check_published_values",
    "consistency_by_family",
    "consistency_by_model",
    "consistency_by_size",
    "consistency_family",
    "consistency_index",
    "consistency_summary",
    "construction_type",
    "curated_vs_translated_donor_correlation",
    "derive_regime",
    "family_distances",
    "global_uplift",
    "harm_rate",
    "kendall_tau_b",
    "language_donor_recipient",
    "language_group",
    "language_pair_means",
    "language_roles",
    "language_roles_by_family",
    "language_transfer_matrix",
    "linguistic_correlations",
    "load_results_table",
    "mtcl_by_construction_type",
    "mtcl_harm_breakdown",
    "on_source_set",
    "pareto_family_summary",
    "pareto_profiles",
    "positive_rate",
    "published_analyses",
    "regime_summary",
    "run_published_analyses",
    "save_tables",
    "task_donor_recipient",
    "task_on_off_summary",
    "task_transfer_matrix",
    "transfer_set",
    "transfer_statistics",
    "two_stage_mean",
    "typological_distances",
    "variance_components",
    "variance_decomposition",
    "variance_shares",
]
