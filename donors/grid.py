"""The study's grid: sources, targets, regimes, and the jobs a config implies."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Cell:
    """One (task, language) pair: a source when trained on, a target when evaluated on."""

    task: str
    language: str

    def __str__(self) -> str:
        return f"{self.task}/{self.language}"


Source = Cell
Target = Cell


class Regime(str, enum.Enum):
    """How a target relates to the source a model state was trained on."""

    MT_ML = "MT-ML"  # same task, same language: the trained cell itself
    MT_CL = "MT-CL"  # same task, other language
    CT_ML = "CT-ML"  # other task, same language
    CT_CL = "CT-CL"  # other task, other language

    @classmethod
    def of(cls, source: Cell, target: Cell) -> "Regime":
        same_task = source.task == target.task
        same_language = source.language == target.language
        if same_task:
            return cls.MT_ML if same_language else cls.MT_CL
        return cls.CT_ML if same_language else cls.CT_CL

    def __str__(self) -> str:
        return self.value


TRANSFER_REGIMES = (Regime.MT_CL, Regime.CT_ML, Regime.CT_CL)
"""Regimes that measure transfer; MT-ML is the trained cell and is kept out of transfer aggregates."""
