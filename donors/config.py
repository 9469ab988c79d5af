"""StudyConfig: one YAML file -> a validated object, checked before any compute.

Defaults follow the published protocol (paper-protocol.md section 4). A bad value fails
with the file, the field, the value and what is allowed.
"""

from __future__ import annotations

from donors.errors import DonorsError

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

GRID_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "pt", "zh")
PAPER_SEEDS = (17, 42, 101)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(DonorsError, ValueError):
    """A study config that cannot run; the message says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Section):
    """A task by registry name, with the options its factory takes (paths, column maps...)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    max_length: int | None = Field(
        None, ge=8, description="tokens a training example of this task keeps (left-truncated); default: train.max_length"
    )


class LoraConfig(_Section):
    r: int = Field(32, gt=0)
    alpha: int = Field(64, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = LORA_TARGETS

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one module, e.g. [q_proj, v_proj]")
        return value


class TrainConfig(_Section):
    epochs: int = Field(3, gt=0)
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    batch_size: int = Field(8, gt=0, description="effective batch size (examples per optimiser step)")
    micro_batch_size: int | None = Field(None, gt=0, description="examples per forward pass; the rest is gradient accumulation")
    max_length: int = Field(256, ge=8)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 42
    keep_best: bool = Field(True, description="keep the epoch with the lowest validation loss")
    max_items: int | None = Field(None, gt=0, description="cap on training items per source (before the validation split)")
    chat_template: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    prompt_format: Literal["lettered", "continuation"] | None = Field(
        None,
        description="what the loss falls on: lettered, the answer letter after A) .. D); continuation, the gold option's "
        "text after 'Answer:'. Default: eval.prompt_format, so a model is trained on what it is scored on",
    )
    allow_format_mismatch: bool = Field(
        False, description="allow a train.prompt_format other than eval.prompt_format (refused otherwise: the scores would measure a format change)"
    )

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainConfig":
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        return self


class EvalConfig(_Section):
    max_items: int | None = Field(
        None, gt=0, description="items per target, the same ids in every language, balanced over gold option positions; all if unset"
    )
    prompt_format: Literal["lettered", "continuation"] = Field(
        "lettered", description="lettered: the answer letter after A) .. D); continuation: each option text scored after the question"
    )
    metric: Literal["acc", "acc_norm"] = Field(
        "acc", description="acc_norm: lm-eval's length-normalised accuracy (the published score); equal to acc for one-letter answers"
    )
    chat_template: bool = True
    batch_size: int = Field(32, gt=0, description="a fixed batch size (lm-eval's 'auto' probes for minutes on a CPU)")
    backend: Literal["native", "harness", "vllm"] = Field(
        "native",
        description="native: our scorer; harness: lm-evaluation-harness on the same items, adapters swapped in-process; "
        "vllm: vLLM's multi-LoRA engine (optional: needs vLLM with LoRA support installed)",
    )
    permutations: Literal["none", "cyclic"] = Field(
        "none",
        description="cyclic: score each item again under every cyclic rotation of its options (k passes for k options) and "
        "store every rotation's prediction, for the acc_perm and acc_perm_strict metrics; lettered format only",
    )

    @model_validator(mode="after")
    def _permutations_need_letters(self) -> "EvalConfig":
        if self.permutations != "none" and self.prompt_format != "lettered":
            raise ValueError(
                "permutations apply to the lettered format: the continuation format shows no option order to permute; "
                "set eval.permutations: none"
            )
        if self.permutations != "none" and self.backend == "vllm":
            raise ValueError("permutations are scored by the native and harness backends; set eval.backend: native")
        return self


class RayConfig(_Section):
    """Where and how Ray runs the jobs (``executor: ray``)."""

    address: str | None = Field(None, description="a running cluster ('auto', 'ray://host:10001'); unset starts a local one")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local cluster started when address is unset")
    cpus_per_job: float = Field(1.0, gt=0)
    gpus_per_job: float | None = Field(None, ge=0, description="unset: 1 when the cluster has GPUs, else 0")
    max_retries: int = Field(2, ge=0, description="retries of a failed job before it is recorded as failed")


class StudyConfig(_Section):
    """Everything a study needs; the output directory holds its store, adapters and report."""

    name: str = "study"
    output_dir: Path = Path("studies/study")
    models: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    languages: tuple[str, ...] = GRID_LANGUAGES
    seeds: tuple[int, ...] = PAPER_SEEDS
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    storage_dir: Path | None = Field(None, description="where adapters are written; every node must read it; default: output_dir")
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = RayConfig()
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on a GPU that supports it, else float32")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_format(self) -> "StudyConfig":
        trained = self.train.prompt_format or self.eval.prompt_format
        if trained != self.eval.prompt_format and not self.train.allow_format_mismatch:
            raise ValueError(
                f"train.prompt_format is {trained!r} but eval.prompt_format is {self.eval.prompt_format!r}: the scores would "
                "measure the change of format, not transfer. Use one format for both, or set train.allow_format_mismatch: true"
            )
        return self

    @property
    def train_format(self) -> str:
        """The format training renders: ``train.prompt_format``, else the evaluation's."""
        return self.train.prompt_format or self.eval.prompt_format

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_from_names(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [TaskSpec(name=v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("models", "tasks", "languages", "seeds")
    @classmethod
    def _non_empty_unique(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("list at least one")
        keys = [v.name if isinstance(v, TaskSpec) else v for v in value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"listed twice: {', '.join(duplicates)}")
        return value

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not (2 <= len(code) <= 3 and code.isalpha() and code.islower()):
                raise ValueError(f"{code!r} is not a language code; use ISO 639-1 like {', '.join(GRID_LANGUAGES)}")
        return value

    @property
    def adapter_storage(self) -> Path:
        return Path(self.storage_dir or self.output_dir)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def max_length_for(self, task: str) -> int:
        """The training length cap of ``task``: its own ``max_length``, else ``train.max_length``."""
        spec = next(t for t in self.tasks if t.name == task)
        return spec.max_length or self.train.max_length

    def train_config_for(self, task: str) -> TrainConfig:
        """``train`` as it applies to one source task (its own length cap)."""
        return self.train.model_copy(update={"max_length": self.max_length_for(task)})

    def recipe(self) -> dict[str, Any]:
        """Every setting that changes a trained adapter or a score (not the grid)."""
        recipe: dict[str, Any] = {k: getattr(self, k).model_dump(mode="json") for k in ("lora", "train", "eval")}
        # Options added later dump only when set, so stores made before them still resume.
        for section, key, default in (("train", "prompt_format", None), ("train", "allow_format_mismatch", False), ("eval", "permutations", "none")):
            if recipe[section][key] == default:
                del recipe[section][key]
        if self.train.max_items or self.eval.max_items:
            # Which items a cut keeps changed to gold-balanced subsets: a store cut the old way must not resume.
            recipe["subset"] = "balanced-by-gold-position"
        if self.eval.backend == "native":
            # The default backend leaves the recipe as it was before backends existed, so stores made then still resume.
            del recipe["eval"]["backend"]
        # A task without its own max_length dumps as before the option existed, so older stores still resume.
        recipe["tasks"] = [t.model_dump(mode="json", exclude={"max_length"} if t.max_length is None else None) for t in self.tasks]
        recipe["dtype"] = self.dtype
        return recipe

    def recipe_hash(self) -> str:
        blob = json.dumps(self.recipe(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid study config"]
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the documented fields"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {field}: {msg}{shown}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> StudyConfig:
    """Validate a plain dict; errors name ``source``, the field, the value and what is allowed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config is a mapping of fields (name, models, tasks, ...), got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path) -> StudyConfig:
    """Read a YAML study config with ``yaml.safe_load`` and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    config = config_from_dict(data, source=str(path))
    if not config.output_dir.is_absolute():
        # A relative output_dir is relative to the working directory, as users expect of a CLI.
        config = config.model_copy(update={"output_dir": Path.cwd() / config.output_dir})
    return config
