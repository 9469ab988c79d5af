"""StudyConfig: one YAML file -> a validated object, checked before any compute.

Defaults follow the published protocol (docs/protocol.md section 4). A bad value fails
with the file, the field, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import unicodedata
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from donors.errors import DonorsError, _quoted, describe_validation_error
from donors.grid import STUDY_LANGUAGES, Cell, cells_matching, path_component

PAPER_SEEDS = (17, 42, 101)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(DonorsError, ValueError):
    """A study config that cannot run; the message says where and how to fix it."""


# Names that become folders of the study (adapters/<model>/<task>/<language>/seed<n>): checked at load, so
# that no name can point a write outside the study (``../..``, ``/abs``) or make a folder a filesystem refuses.
MAX_TASK_NAME = 64
MAX_MODEL_ENTRY = 1024
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
TASK_NAME_RULE = (
    f"a task name is a folder of the study: use letters A-Z a-z, digits, '_', '-' and '.', start with a letter or a digit, "
    f"at most {MAX_TASK_NAME} characters (e.g. my_task-v2)"
)


def is_hub_id(name: str) -> bool:
    """``org/name`` as the Hugging Face hub spells a repository (letters, digits, '.', '_', '-'), no ``..``."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def _control_characters(value: str) -> list[str]:
    return sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def _admits_bool(annotation) -> bool:
    return annotation is bool or any(_admits_bool(arg) for arg in get_args(annotation))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_yaml_booleans(cls, data: Any) -> Any:
        """YAML 1.1 reads yes/no/on/off as booleans: ``languages: [no]`` would be Norwegian as False, ``epochs: true`` a 1."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            values = value if isinstance(value, (list, tuple)) else [value]
            if field is not None and not _admits_bool(field.annotation) and any(isinstance(v, bool) for v in values):
                raise ValueError(
                    f"{name}: got {value!r}, a boolean; YAML reads yes/no/on/off/true/false as booleans: quote a text ('no') "
                    "and write numbers as numbers"
                )
        return data


class TaskSpec(_Section):
    """A task by registry name, with the options its factory takes (paths, column maps...)."""

    name: str = Field(
        description="a registered task (`donors tasks`), or your own name for a task built from `options` (e.g. `source: files`); "
        f"it names a folder of the study: letters, digits, '_', '-' and '.', starting with a letter or digit, at most {MAX_TASK_NAME} characters"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword options of the task's factory: local copies, file paths, column maps (docs/local-tasks.md)",
    )
    max_length: int | None = Field(
        None, ge=8, description="tokens a training example of this task keeps (left-truncated); default: train.max_length"
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        if len(value) > MAX_TASK_NAME or not _TASK_NAME.fullmatch(value):
            raise ValueError(TASK_NAME_RULE)
        return value


class LoraConfig(_Section):
    """The LoRA adapter trained on each (model, source, seed); the published protocol's by default."""

    r: int = Field(32, gt=0, description="rank of the LoRA update; 32, as published")
    alpha: int = Field(64, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / r); 64 = 2r, as published")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA layers' input; 0.0, as published (PEFT's default)")
    target_modules: tuple[str, ...] = Field(
        LORA_TARGETS,
        description="names of the modules that get an adapter, at least one; as published, all seven attention and MLP projections",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one module, e.g. [q_proj, v_proj]")
        return value


class TrainConfig(_Section):
    """Fine-tuning: AdamW, linear warmup and decay, gradient clipping at 1.0 (docs/protocol.md section 4)."""

    epochs: int = Field(3, gt=0, description="passes over the training items; 3, as published")
    learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="peak AdamW learning rate; 5e-5, the HF Trainer default the published run left in place",
    )
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of the optimiser steps with a linear warmup; 0.1, as published")
    batch_size: int = Field(
        8, gt=0, description="effective batch size (examples per optimiser step); 8, the Trainer's default starting batch size"
    )
    micro_batch_size: int | None = Field(
        None,
        gt=0,
        description="examples per forward pass, the rest is gradient accumulation; must divide batch_size. Unset: the "
        "whole batch, halved on out-of-memory (the gradients stay those of batch_size)",
    )
    max_length: int = Field(
        256,
        ge=8,
        description="tokens a training example keeps (left-truncated) for a task without its own max_length; 256, published for ARC",
    )
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share of each source's training items held out to pick the best epoch; 0.1, as published (300 -> 270/30)",
    )
    split_seed: int = Field(42, description="seed of the train/validation split, the same for every experiment seed; 42, as published")
    keep_best: bool = Field(True, description="keep the epoch with the lowest validation loss, as published (else the last epoch)")
    max_items: int | None = Field(None, gt=0, description="cap on training items per source (before the validation split); all if unset")
    chat_template: bool = Field(
        False, description="wrap training prompts in the model's chat template; off, as published (plain-text prompts)"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay; 0.0, the Trainer's default the published run kept")
    prompt_format: Literal["lettered", "continuation"] | None = Field(
        None,
        description="what the loss falls on: lettered, the answer letter after A) .. D); continuation, the gold option's "
        "text after 'Answer:'. Default: eval.prompt_format, so a model is trained on what it is scored on",
    )
    allow_format_mismatch: bool = Field(
        False,
        description="allow a train.prompt_format other than eval.prompt_format (refused otherwise: the scores would measure a format change)",
    )
    deterministic: bool = Field(
        True,
        description="on a GPU, train with deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8), "
        "so a retried job trains the same adapter; each adapter records whether its run was (versions.deterministic). Cost: "
        "some backward kernels (attention, index accumulation) run slower deterministic variants and cuBLAS keeps a larger "
        "workspace; measured on one H200, Llama-3.2-1B's shape trained 1.6x slower (README, GPU figures). Set false to trade "
        "reproducible retries for that time; a kernel with no deterministic variant warns and the run is recorded as not "
        "deterministic. No effect on CPUs, whose kernels are deterministic already. Not part of the recipe",
    )

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainConfig":
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        return self


class VllmConfig(_Section):
    """Options of the vLLM engine (``eval.backend: vllm``); unset, vLLM's own defaults."""

    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="share of the GPU's memory the engine may take (weights, activations, KV cache); vLLM refuses to start "
        "when less than this is free. Unset: vLLM's default (0.9); lower it when another process shares the GPU",
    )
    max_model_len: int | None = Field(
        None, ge=64, description="longest prompt in tokens, also the length prompts are cut to; unset: 4096. Part of the recipe when set"
    )
    enforce_eager: bool = Field(False, description="no CUDA graphs: slower, less memory and a faster start")
    max_num_seqs: int | None = Field(None, gt=0, description="requests batched together at most; unset: vLLM's default")
    max_loras: int = Field(8, gt=0, description="adapters resident in the engine at once, so scored in one engine call")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="any other keyword of vllm.LLM (e.g. {tensor_parallel_size: 2, kv_cache_dtype: fp8}); part of the recipe when set",
    )


class EvalConfig(_Section):
    """Scoring every model state (base and adapters) on every target, zero-shot."""

    max_items: int | None = Field(
        None, gt=0, description="items per target, the same ids in every language, balanced over gold option positions; all if unset"
    )
    prompt_format: Literal["lettered", "continuation"] = Field(
        "lettered",
        description="lettered: the answer letter after A) .. D), the published training format (the published evaluation "
        "format is unknown); continuation: each option text scored after the question",
    )
    metric: Literal["acc", "acc_norm"] = Field(
        "acc",
        description="acc: the share of items whose top-scoring option is gold; acc_norm: lm-eval's length-normalised "
        "accuracy (the published score, set in configs/paper.yaml); equal to acc for one-letter answers",
    )
    chat_template: bool = Field(
        True, description="wrap evaluation prompts in the model's chat template; on, as published (lm-eval --apply_chat_template)"
    )
    batch_size: int = Field(
        32, gt=0, description="examples per scoring forward pass, fixed: lm-eval's 'auto' (published) probes for minutes on a CPU"
    )
    backend: Literal["native", "harness", "vllm"] = Field(
        "native",
        description="native: our scorer; harness: lm-evaluation-harness on the same items, adapters swapped in-process; "
        "vllm: vLLM's multi-LoRA engine (optional: needs vLLM with LoRA support installed)",
    )
    vllm: VllmConfig = Field(VllmConfig(), description="the vLLM engine's options, with eval.backend: vllm (section eval.vllm)")
    permutations: Literal["none", "cyclic"] = Field(
        "none",
        description="cyclic: score each item again under every cyclic rotation of its options (k passes for k options) and "
        "store every rotation's prediction, for the acc_perm and acc_perm_strict metrics; lettered format and the native "
        "or harness backend only",
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
    cpus_per_job: float = Field(1.0, gt=0, description="CPUs Ray reserves for each training or evaluation job")
    gpus_per_job: float | None = Field(
        None,
        ge=0,
        description="unset: 1 when the cluster has GPUs, else 0. Below 1 lets jobs share a GPU's memory, not its time: on one "
        "H200, 2 and 4 processes training at once gave 0.96x and 0.83x the tokens/s of one (README, GPU figures)",
    )
    max_retries: int = Field(2, ge=0, description="retries of a failed job before it is recorded as failed")


class StudyConfig(_Section):
    """Everything a study needs; the output directory holds its store, adapters and report."""

    _source: str = PrivateAttr("the study config")
    """Where it was read from (the YAML file), for errors found after validation: a task's options, its data."""

    name: str = Field("study", description="the study's name, the title of its report")
    output_dir: Path = Field(
        Path("studies/study"),
        description="the study's directory: results store, adapters (unless storage_dir) and report; relative to the working directory",
    )
    models: tuple[str, ...] = Field(
        description="base models, at least one, each once: an embedded model (`donors models`), a local Hugging Face model "
        "directory or a hub id 'org/name'; checked before anything is loaded or written. Each becomes the folder of its "
        "adapters ('org/name' -> org__name; a path with other characters than letters, digits, '.', '_', '-' and '/' is "
        "cut to those, plus a hash); two entries that would share a folder, even only by case, are refused"
    )
    tasks: tuple[TaskSpec, ...] = Field(
        description="at least one, each once; each is a source (trained on) and a target (scored) in every language: a "
        "registered name (`donors tasks`) or a mapping with the fields of the tasks section"
    )
    languages: tuple[str, ...] = Field(
        STUDY_LANGUAGES,
        description="the sources' and targets' languages, at least one, each once: ISO 639-1 codes (2-3 lowercase letters); "
        "the published eleven",
    )
    sources: tuple[str, ...] | dict[str, tuple[str, ...]] | None = Field(
        None,
        description="the cells to train on (every cell is still a target): 'task/language' or a pattern ('truthfulqa/*', "
        "'*/hi', 'hi'), a list for every model or a mapping model -> list (`donors plan --budget` writes one); "
        "unset: every (task, language)",
    )
    seeds: tuple[int, ...] = Field(
        PAPER_SEEDS, description="one adapter per seed and (model, source), at least one, each once; the published 17, 42, 101"
    )
    lora: LoraConfig = Field(LoraConfig(), description="the LoRA adapter (section lora)")
    train: TrainConfig = Field(TrainConfig(), description="fine-tuning (section train)")
    eval: EvalConfig = Field(EvalConfig(), description="scoring (section eval)")
    storage_dir: Path | None = Field(None, description="where adapters are written; every node must read it; default: output_dir")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: the jobs run in this process, one model loaded at a time; ray: on a Ray cluster (section ray)"
    )
    ray: RayConfig = Field(RayConfig(), description="the Ray cluster, used with executor: ray (section ray)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bf16 on a GPU that supports it, else float32 (the published runs: bfloat16); each score records the dtype it was computed in, and a model scored in two is flagged",
    )
    trust_remote_code: bool = Field(
        False, description="let transformers run a hub model's own Python code; off: loading a model runs no code from the hub"
    )
    curated: tuple[str, ...] = Field(
        ("global_mmlu",),
        description="the human-translated tasks, which the analyses A4, A11 and A15 set apart from the machine-translated "
        "rest (the published study's: global_mmlu); changes no result, only those analyses",
    )

    @model_validator(mode="after")
    def _one_format(self) -> "StudyConfig":
        trained = self.train.prompt_format or self.eval.prompt_format
        if trained != self.eval.prompt_format and not self.train.allow_format_mismatch:
            raise ValueError(
                f"train.prompt_format is {trained!r} but eval.prompt_format is {self.eval.prompt_format!r}: the scores would "
                "measure the change of format, not transfer. Use one format for both, or set train.allow_format_mismatch: true"
            )
        return self

    @model_validator(mode="after")
    def _sources_in_grid(self) -> "StudyConfig":
        if self.sources is None:
            return self
        grid = [Cell(task, language) for task in self.task_names for language in self.languages]
        lists = self.sources if isinstance(self.sources, dict) else {"": self.sources}
        unknown = sorted(set(lists) - set(self.models) - {""})
        if unknown:
            raise ValueError(f"sources names model(s) {', '.join(map(repr, unknown))} that are not in models ({', '.join(self.models)})")
        unlisted = [model for model in self.models if isinstance(self.sources, dict) and model not in self.sources]
        if unlisted:
            raise ValueError(
                f"sources lists sources per model but not for {', '.join(map(repr, unlisted))}: give each model its list "
                "(an empty list [] trains nothing for it), or one list for every model"
            )
        for model, patterns in lists.items():
            _, unmatched = cells_matching(patterns, grid)
            if unmatched:
                where = f"sources.{model}" if model else "sources"
                raise ValueError(
                    f"{where}: {', '.join(map(repr, unmatched))} match no cell of the grid; its cells are "
                    f"{', '.join(map(str, grid[:12]))}{', ...' if len(grid) > 12 else ''} (task/language, wildcards allowed)"
                )
        return self

    def source_cells(self, model: str) -> list[Cell]:
        """The cells ``model`` is trained on: those ``sources`` lists for it (all of them when unset), in grid order."""
        grid = [Cell(task, language) for task in self.task_names for language in self.languages]
        if self.sources is None:
            return grid
        patterns = self.sources.get(model, ()) if isinstance(self.sources, dict) else self.sources
        return cells_matching(patterns, grid)[0]

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

    @field_validator("models")
    @classmethod
    def _model_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        fix = "name an embedded model (`donors models`), a local model directory or a hub id 'org/name'"
        folders: dict[str, str] = {}
        for entry in value:
            if not entry.strip():
                raise ValueError(f"a model entry is empty; {fix}")
            if entry != entry.strip():
                raise ValueError(f"model {_quoted(entry)} has spaces at its ends; remove them")
            if len(entry) > MAX_MODEL_ENTRY:
                raise ValueError(f"model {_quoted(entry)} is {len(entry):,} characters long; at most {MAX_MODEL_ENTRY:,}: {fix}")
            if bad := _control_characters(entry):
                raise ValueError(f"model {_quoted(entry)} holds control characters ({', '.join(bad)}); {fix}")
            folder = path_component(entry)
            if (other := folders.setdefault(folder.casefold(), entry)) != entry:
                raise ValueError(
                    f"models {_quoted(other)} and {_quoted(entry)} name one model or would share the adapter folder "
                    f"{folder!r} (names that differ only in case are one model on the hub and one folder on macOS and "
                    "Windows); keep one of them"
                )
        return value

    @field_validator("tasks")
    @classmethod
    def _task_folders(cls, value: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
        folders: dict[str, str] = {}
        for task in value:
            if (other := folders.setdefault(task.name.casefold(), task.name)) != task.name:
                raise ValueError(
                    f"tasks {other!r} and {task.name!r} differ only in case: they would share one folder on macOS and Windows; rename one"
                )
        return value

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [seed for seed in value if not 0 <= seed < 2**32]
        if bad:
            raise ValueError(f"seeds {bad} are outside 0 .. 2**32 - 1, the range every random generator the study seeds accepts")
        return value

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not (2 <= len(code) <= 3 and code.isalpha() and code.islower()):
                raise ValueError(f"{code!r} is not a language code; use ISO 639-1 like {', '.join(STUDY_LANGUAGES)}")
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

    @property
    def source(self) -> str:
        """The file this config was read from (``<config>`` when built from a dict)."""
        return self._source

    def recipe(self) -> dict[str, Any]:
        """Every setting that changes a trained adapter or a score (not the grid)."""
        recipe: dict[str, Any] = {k: getattr(self, k).model_dump(mode="json") for k in ("lora", "train", "eval")}
        # Options added later dump only when set, so stores made before them still resume.
        for section, key, default in (
            ("train", "prompt_format", None),
            ("train", "allow_format_mismatch", False),
            ("eval", "permutations", "none"),
        ):
            if recipe[section][key] == default:
                del recipe[section][key]
        if self.train.max_items or self.eval.max_items:
            # Which items a cut keeps changed to gold-balanced subsets: a store cut the old way must not resume.
            recipe["subset"] = "balanced-by-gold-position"
        # Engine options change no score, except the prompt length and options passed through unseen.
        vllm = {k: v for k, v in recipe["eval"].pop("vllm").items() if k in ("max_model_len", "engine_args") and v}
        if vllm:
            recipe["eval"]["vllm"] = vllm
        # Deterministic kernels change no result's distribution; each adapter records whether its run used them.
        del recipe["train"]["deterministic"]
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


# The reference page: docs/config.md is this function's output, so the docs cannot drift from the fields.

_REFERENCE_SECTIONS: tuple[tuple[str, str, type[_Section]], ...] = (
    ("Top level", "", StudyConfig),
    ("tasks", "tasks[].", TaskSpec),
    ("lora", "lora.", LoraConfig),
    ("train", "train.", TrainConfig),
    ("eval", "eval.", EvalConfig),
    ("eval.vllm", "eval.vllm.", VllmConfig),
    ("ray", "ray.", RayConfig),
)
_SECTION_ANCHORS = {cls: title.lower().replace(" ", "-").replace(".", "") for title, _, cls in _REFERENCE_SECTIONS}
_SECTION_TITLES = {cls: title for title, _, cls in _REFERENCE_SECTIONS}
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", Any: "any"}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _type_text(annotation: Any) -> str:
    """A field's type as a YAML writer sees it: ``tuple[int, ...]`` -> list of integer."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (Union, UnionType):
        return " or ".join(_type_text(a) for a in args if a is not type(None))
    if origin is tuple:
        item = args[0]
        if isinstance(item, type) and issubclass(item, _Section):
            return f"list of [{_SECTION_TITLES[item]}](#{_SECTION_ANCHORS[item]}) entries"
        return f"list of {_type_text(item)}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return f"mapping, see [{_SECTION_TITLES[annotation]}](#{_SECTION_ANCHORS[annotation]})"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds_text(metadata: list[Any]) -> str:
    bounds = [f"{sign} {_value_text(getattr(m, key))}" for m in metadata for key, sign in _BOUNDS.items() if hasattr(m, key)]
    return f", {', '.join(bounds)}" if bounds else ""


def _value_text(value: Any) -> str:
    """A default as it would be written in YAML (``5.0e-5``, ``true``, ``[17, 42, 101]``)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:  # YAML reads 5e-05 as a string: write 5.0e-5
            mantissa, exponent = text.split("e")
            text = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{int(exponent)}"
        return text
    if isinstance(value, (tuple, list)):
        return f"[{', '.join(_value_text(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, _Section):
        return "each field's default"
    return f"`{_value_text(value)}`" if value is not None else "unset"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """Every field of a study config, with its type, default and description, as Markdown (docs/config.md)."""
    lines = [
        "# Study config reference",
        "",
        "Generated from the field descriptions in `donors/config.py`: do not edit this page, regenerate it with",
        "`donors config > docs/config.md` (`tests/test_config_docs.py` fails when the two differ).",
        "",
        "A study config is one YAML file (`configs/demo.yaml`, `configs/paper.yaml`), validated before any compute:",
        "an unknown field or a bad value fails with the file, the field, the value and what is allowed. Defaults are",
        "the published protocol's where it sets one (docs/protocol.md section 4); `unset` means leave the field out.",
    ]
    for title, prefix, cls in _REFERENCE_SECTIONS:
        doc = inspect.cleandoc(cls.__doc__ or "").replace("``", "`")
        lines += ["", f"## {title}", "", doc, "", "| field | type | default | description |", "|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            kind = _type_text(field.annotation) + _bounds_text(field.metadata)
            lines.append(f"| `{prefix}{name}` | {_cell(kind)} | {_cell(_default_text(field))} | {_cell(field.description or '')} |")
    return "\n".join(lines) + "\n"


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> StudyConfig:
    """Validate a plain dict; errors name ``source``, the field, the value and what is allowed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config is a mapping of fields (name, models, tasks, ...), got {type(data).__name__}")
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as error:
        heading = f"{source}: invalid study config"
        raise ConfigError(describe_validation_error(error, heading, reference="docs/config.md, `donors config`")) from None
    config._source = source
    return config


MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000
"""Values a config may hold once its aliases (``*name``) are expanded; more is an expansion bomb."""


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load``, refusing a key given twice (YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        if twice:
            raise yaml.constructor.ConstructorError(None, None, f"key(s) {', '.join(twice)} given twice; keep one", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(value, sizes: dict[int, int]) -> int:
    """How many values ``value`` holds with every alias expanded, each shared object counted once per use."""
    if not isinstance(value, (list, dict)):
        return 1
    if id(value) not in sizes:
        children = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def load_config(path: str | Path) -> StudyConfig:
    """Read a YAML study config with ``yaml.safe_load`` and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a study config is at most {MAX_CONFIG_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass: safe_load plus one check
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if _expanded_size(data, {}) > MAX_CONFIG_NODES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_NODES:,} values once its aliases (*name) are expanded; write the values out")
    config = config_from_dict(data, source=str(path))
    if not config.output_dir.is_absolute():
        # A relative output_dir is relative to the working directory, as users expect of a CLI.
        config = config.model_copy(update={"output_dir": Path.cwd() / config.output_dir})
    return config
