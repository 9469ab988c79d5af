"""The study's grid: its languages, cells (task, language), the regime of a (source, target) pair, and the size a model's name states."""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
from dataclasses import dataclass

import numpy as np

MAX_COMPONENT = 120
"""Characters of a folder name made from a model entry or other name (filesystems allow 255 bytes)."""
MAX_FILE_STEM = 200
"""Characters of a table's or figure's file name before its suffix: room for a prefix before a model's component."""
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def path_component(name: str, limit: int = MAX_COMPONENT) -> str:
    """The one folder name a model entry (or any other name) becomes: never ``..``, a path, or a control character.

    An embedded model or a hub id keeps the spelling adapter folders always had ('org/name' -> 'org__name'); so does a
    local path made only of letters, digits, '.', '_', '-' and '/' ('/models/llama' -> '__models__llama'). Any other
    name (a leading dot, spaces, other characters, very long) is cut to those characters, with the first 8 hex digits of
    its SHA-256 appended so two entries never share a folder: './my model' -> 'my_model-<hash>'.
    ``limit``: the most characters kept; files named ``<prefix>__<component>`` use
    :data:`MAX_FILE_STEM`, so a name built from a component is never cut and hashed again.
    """
    plain = name.replace("/", "__")
    if _SAFE_COMPONENT.fullmatch(plain) and len(plain) <= limit:
        return plain
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", plain).lstrip("._")[: limit - 9] or "name"
    return f"{cleaned}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


STUDY_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")
"""The published grid's eleven languages, in the order its tables use."""


_STATED_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bBmMkK])")
_BILLIONS_PER_UNIT = {"b": 1.0, "m": 1e-3, "k": 1e-6}


def size_from_name(name: str) -> float:
    """The published schema's ``model_size``: the size a model's name states, in billions.

    Llama-3.2-1B -> 1, Qwen2.5-0.5B -> 0.5, smollm2-135m -> 0.135; NaN when the name states none
    (docs/protocol.md section 1a). A label read off the name, not a parameter count: Llama-3.2-1B
    has 1.24B parameters (the count ``donors plan`` uses is ``donors.plan.parameter_count``).
    """
    match = _STATED_SIZE.search(name.rsplit("/", 1)[-1])
    if not match:
        return float("nan")
    return float(match.group(1)) * _BILLIONS_PER_UNIT[match.group(2).lower()]


@dataclass(frozen=True, order=True)
class Cell:
    """One (task, language) pair: a source when trained on, a target when evaluated on."""

    task: str
    language: str

    def __str__(self) -> str:
        return f"{self.task}/{self.language}"


def cells_matching(patterns, cells) -> tuple[list[Cell], list[str]]:
    """The ``cells`` (in their order) that any pattern matches, and the patterns that match none.

    A pattern is 'task/language' with shell wildcards in either part ('truthfulqa/*', '*/hi',
    'arc_*/en'); one without a '/' matches a task or a language ('hi', 'truthfulqa').
    """
    cells = list(cells)
    names = [str(cell) for cell in cells]
    chosen: set[str] = set()
    unmatched = []
    for pattern in patterns:
        forms = [pattern] if "/" in pattern else [f"{pattern}/*", f"*/{pattern}"]
        hits = {name for name in names for form in forms if fnmatch.fnmatchcase(name, form)}
        if not hits:
            unmatched.append(pattern)
        chosen |= hits
    return [cell for cell, name in zip(cells, names) if name in chosen], unmatched


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
