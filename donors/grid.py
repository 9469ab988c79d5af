"""The study's grid: cells (task, language) and the regime of a (source, target) pair."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


STUDY_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")
"""The published grid's eleven languages, in the order its tables use."""


@dataclass(frozen=True, order=True)
class Cell:
    """One (task, language) pair: a source when trained on, a target when evaluated on."""

    task: str
    language: str

    def __str__(self) -> str:
        return f"{self.task}/{self.language}"



class Regime(str, enum.Enum):
    """How a target relates to the source a model state was trained on."""

    MT_ML = "MT-ML"  # same task, same language: the trained cell itself
    MT_CL = "MT-CL"  # same task, other language
    CT_ML = "CT-ML"  # other task, same language
    CT_CL = "CT-CL"  # other task, other language

    @classmethod
    def of(cls, source: Cell, target: Cell) -> "Regime":
        return _BY_SAMENESS[2 * (source.task == target.task) + (source.language == target.language)]

    def __str__(self) -> str:
        return self.value


_BY_SAMENESS = (Regime.CT_CL, Regime.CT_ML, Regime.MT_CL, Regime.MT_ML)
"""The one rule, indexed by 2 x same task + same language (the published validator's label)."""


def regime_labels(source_task, source_language, target_task, target_language) -> np.ndarray:
    """:meth:`Regime.of` over whole columns at once: the regimes' labels as an array of strings."""
    same_task = (np.asarray(source_task, dtype=object) == np.asarray(target_task, dtype=object)).astype(int)
    same_language = (np.asarray(source_language, dtype=object) == np.asarray(target_language, dtype=object)).astype(int)
    return np.array([r.value for r in _BY_SAMENESS], dtype=object)[2 * same_task + same_language]
