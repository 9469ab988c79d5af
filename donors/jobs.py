"""The jobs a study config implies: small, hashable descriptions with stable ids.

Given the same config the same jobs come out with the same ids, so resuming a study is
"skip the ids already in the store".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from donors.config import ConfigError, StudyConfig
from donors.grid import Cell, path_component
from donors.records import ModelState, eval_job_id


@dataclass(frozen=True)
class TrainJob:
    """Fine-tune ``model`` on ``source`` with ``seed``."""

    model: str
    source: Cell
    seed: int

    @property
    def state(self) -> ModelState:
        return ModelState(self.model, self.source, self.seed)

    @property
    def job_id(self) -> str:
        return self.state.state_id

    def adapter_dir(self, storage_dir: Path, key: str) -> Path:
        """Where this job's adapter goes: ``key`` names what made it (recipe and training data).

        Studies that share ``storage_dir`` thus never write over each other's adapters unless
        they would train the very same one. The path must stay inside ``storage_dir``.
        """
        storage_dir = Path(storage_dir)
        path = storage_dir / "adapters" / path_component(self.model) / self.source.task / self.source.language / f"seed{self.seed}-{key}"
        if not path.resolve().is_relative_to(storage_dir.resolve()):
            raise ConfigError(f"the adapter of {self.job_id} would be written to {path}, outside {storage_dir}; rename the model or task")
        return path


@dataclass(frozen=True)
class EvalJob:
    """Score one model state on one target."""

    state: ModelState
    target: Cell

    @property
    def job_id(self) -> str:
        return eval_job_id(self.state, self.target)


@dataclass(frozen=True)
class StateWork:
    """One model state's targets left to score, with its adapter (``None`` for the base) and the digest it was stored with."""

    state: ModelState
    targets: list[Cell]
    adapter_path: str | None = None
    adapter_sha256: str | None = None


def cells(config: StudyConfig) -> list[Cell]:
    """Every (task, language) of the grid: the sources, and equally the targets."""
    return [Cell(task, language) for task in config.task_names for language in config.languages]


def train_jobs(config: StudyConfig) -> list[TrainJob]:
    """One adapter per (model, chosen source, seed): the sources are ``config.sources`` (all cells by default)."""
    return [TrainJob(model, source, seed) for model in config.models for source in config.source_cells(model) for seed in config.seeds]


def model_states(config: StudyConfig, model: str) -> list[ModelState]:
    """The base model first, then every adapted state of ``model``."""
    return [ModelState(model)] + [job.state for job in train_jobs(config) if job.model == model]


def eval_jobs(config: StudyConfig) -> list[EvalJob]:
    return [EvalJob(state, target) for model in config.models for state in model_states(config, model) for target in cells(config)]
