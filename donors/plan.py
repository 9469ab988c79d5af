"""What a study config costs before anything runs: jobs, tokens, FLOPs and GPU-hours.

Pure and fast: no model weights are loaded and nothing is downloaded. Item counts and
prompt lengths come from the data when a task can be read locally (embedded tasks, local
files); a published benchmark that lives on the Hugging Face hub falls back to its
documented split sizes (docs/protocol.md section 3) and typical prompt lengths, which its
definition in :mod:`donors.tasks.published` carries, and the plan says which numbers are such
estimates.

Compute follows the usual transformer rule of thumb: a forward pass costs 2 FLOPs per
parameter per token. LoRA training adds the backward pass through the activations (another
2) but no weight gradients for the frozen weights, so about 4 x params x tokens; scoring is
forward only, 2 x params x tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from donors.config import ConfigError, StudyConfig, TaskSpec
from donors.grid import size_from_name
from donors.jobs import cells
from donors.tasks.data import DataError, check_languages, study_task, subsample
from donors.tasks.item import Item
from donors.tasks.prompts import choice_strings, prompt_text
from donors.tasks.published import Benchmark, PublishedTask

DEFAULT_TFLOPS = 989.0  # H100 SXM, dense bf16 tensor-core peak
DEFAULT_MFU = 0.4
HOST_BOUND_BELOW_B = 2.0
"""Models under this many billion parameters were host-bound on a GPU at the published batch (8 x ~250 tokens): on one
H200 (README, GPU figures) the 0.5B-1.2B shapes trained at 3-12% utilisation while Llama-3.1-8B's reached 48%."""
HOST_BOUND_MFU = 0.03
"""The lowest training utilisation measured there (Qwen2.5-0.5B's shape): how far a small model's hours can exceed the plan's."""
CHARS_PER_TOKEN = 4.0
CHAT_TEMPLATE_TOKENS = 30  # role headers plus a default system turn (Llama 3's dated header, Qwen's system prompt)
TRAIN_FLOPS_PER_PARAM_TOKEN = 4.0
EVAL_FLOPS_PER_PARAM_TOKEN = 2.0

# Parameter counts (billions) of the published models, from their model cards: what FLOPs scale
# with. Not the published results' model_size, which is the size the name states (Llama-3.2-1B: 1).
PARAMETER_COUNTS_B = {
    "llama-3.2-1b-instruct": 1.24,
    "llama-3.2-3b-instruct": 3.21,
    "llama-3.1-8b-instruct": 8.03,
    "qwen2.5-0.5b-instruct": 0.49,
    "qwen2.5-1.5b-instruct": 1.54,
    "qwen2.5-3b-instruct": 3.09,
    "qwen2.5-7b-instruct": 7.62,
    "gemma-3-1b-it": 1.0,
    "gemma-3-4b-it": 4.3,
}
# A size a model's name states ("7B", "135m", "0.5 b"): the estimate for a model not in the table.


@dataclass(frozen=True)
class TaskSizes:
    """One task's items and tokens, summed over the study's languages (one pass, one seed)."""

    task: str
    train_items: int
    test_items: int
    train_tokens: float
    test_tokens: float
    estimated: bool
    note: str


@dataclass(frozen=True)
class ModelPlan:
    model: str
    params_billions: float
    params_from: str
    train_jobs: int
    model_states: int
    eval_jobs: int
    train_tokens: float
    eval_tokens: float
    train_flops: float
    eval_flops: float
    train_gpu_hours: float
    eval_gpu_hours: float

    @property
    def gpu_hours(self) -> float:
        return self.train_gpu_hours + self.eval_gpu_hours


@dataclass(frozen=True)
class StudyPlan:
    """Per-model rows, the task sizes behind them, and the assumptions they rest on."""

    models: tuple[ModelPlan, ...]
    tasks: tuple[TaskSizes, ...]
    sources: int
    targets: int
    seeds: int
    tflops: float
    mfu: float
    chars_per_token: float
    train_chat_template: bool
    eval_chat_template: bool

    @property
    def train_jobs(self) -> int:
        return sum(m.train_jobs for m in self.models)

    @property
    def model_states(self) -> int:
        return sum(m.model_states for m in self.models)

    @property
    def eval_jobs(self) -> int:
        return sum(m.eval_jobs for m in self.models)

    @property
    def train_tokens(self) -> float:
        return sum(m.train_tokens for m in self.models)

    @property
    def eval_tokens(self) -> float:
        return sum(m.eval_tokens for m in self.models)

    @property
    def gpu_hours(self) -> float:
        return sum(m.gpu_hours for m in self.models)

    @property
    def estimated(self) -> bool:
        return any(t.estimated for t in self.tasks) or any(m.params_from == "unknown" for m in self.models)

    def assumptions(self) -> list[str]:
        """The plain-language basis of every number, printed under the table."""
        wrapped = [name for name, on in (("training", self.train_chat_template), ("scored", self.eval_chat_template)) if on]
        chat = f"; {' and '.join(wrapped)} prompts add {CHAT_TEMPLATE_TOKENS} chat-template tokens" if wrapped else ""
        lines = [
            f"jobs: sources (up to {self.sources}; config sources, every cell when unset) x {self.seeds} seed(s) = adapters "
            "per model; states = 1 base + adapters; "
            f"evaluation jobs = states x {self.targets} targets",
            f"tokens: characters / {self.chars_per_token:g} (real tokenizers differ; non-Latin scripts take more tokens "
            "per character); training counts every train item (its validation share too) once per epoch, each capped at "
            f"its task's max_length (else train.max_length){chat}",
            f"FLOPs: LoRA training {TRAIN_FLOPS_PER_PARAM_TOKEN:g} x params x tokens (forward + activation gradients; "
            f"frozen weights need no weight gradients), scoring {EVAL_FLOPS_PER_PARAM_TOKEN:g} x params x tokens; no padding",
            f"GPU-hours: FLOPs / ({self.tflops:g} TFLOP/s x {self.mfu:.0%} utilisation): the peak is the accelerator's data "
            "sheet; measured once on an H200 at the published batch (README, GPU figures), training reached 48% for "
            "Llama-3.1-8B's shape but 3-12% for the 0.5B-1.2B shapes, whose steps wait on the host; bench/gpu_throughput.py "
            "prints the --mfu for your GPU; change with --tflops and --mfu",
        ]
        small = [f"{m.model} ({m.params_billions:g}B)" for m in self.models if m.params_billions < HOST_BOUND_BELOW_B]
        if small and self.mfu > HOST_BOUND_MFU:
            lines.append(
                f"host-bound: {', '.join(small)}: the 0.5B-1.2B shapes measured on the H200 reached 3-12% utilisation, so "
                f"the GPU-hours of models under {HOST_BOUND_BELOW_B:g}B parameters may be up to {self.mfu / HOST_BOUND_MFU:.0f}x "
                "the figures above"
            )
        for task in self.tasks:
            if task.estimated:
                lines.append(f"estimate: {task.task}: {task.note}")
        for model in self.models:
            if model.params_from == "unknown":
                lines.append(f"unknown: {model.model}: no parameter count in the table or the name, so no FLOPs")
        return lines


def parameter_count(model: str) -> tuple[float, str]:
    """(billions of parameters, where the number came from) for FLOPs: the table, else the size the name states.

    "published" for a model in the table, "name" for an estimate read off the name (smollm2-135m:
    0.135), "unknown" (NaN) when neither has one.
    """
    key = model.rstrip("/").rsplit("/", 1)[-1].lower()
    if key in PARAMETER_COUNTS_B:
        return PARAMETER_COUNTS_B[key], "published"
    stated = size_from_name(model)
    return (stated, "name") if stated == stated else (stated, "unknown")


def check_throughput(tflops: float, mfu: float) -> None:
    """The accelerator assumptions must be usable: a positive peak and a utilisation in (0, 1]."""
    if tflops <= 0 or not 0 < mfu <= 1:
        raise ConfigError(f"--tflops must be > 0 and --mfu in (0, 1], got {tflops} and {mfu}")


def gpu_hours(flops: float, tflops: float = DEFAULT_TFLOPS, mfu: float = DEFAULT_MFU) -> float:
    """Hours of one accelerator sustaining ``mfu`` of a ``tflops`` peak."""
    check_throughput(tflops, mfu)
    return flops / (tflops * 1e12 * mfu) / 3600


def _train_tokens(item: Item, config: StudyConfig, ratio: float, max_length: int) -> float:
    """A text target (TruthfulQA) is trained bare; a lettered prompt may be chat-wrapped."""
    fmt = config.train_format
    if fmt == "lettered" and item.target_text is not None:
        tokens = len(item.target_text) / ratio
    else:
        answer = choice_strings(item, fmt)[item.answer_index]
        tokens = (len(prompt_text(item, fmt)) + 1 + len(answer)) / ratio + (CHAT_TEMPLATE_TOKENS if config.train.chat_template else 0)
    return min(tokens, max_length)


def _test_tokens(item: Item, config: StudyConfig, ratio: float) -> float:
    """The prompt once, plus every answer after it (the native scorer encodes a shared prompt once)."""
    fmt = config.eval.prompt_format
    answers = sum(len(choice) + 1 for choice in choice_strings(item, fmt))
    return (len(prompt_text(item, fmt)) + answers) / ratio + (CHAT_TEMPLATE_TOKENS if config.eval.chat_template else 0)


def _measured(spec: TaskSpec, task, config: StudyConfig, ratio: float) -> TaskSizes:
    train_items = test_items = 0
    train_tokens = test_tokens = 0.0
    check_languages(config, spec.name, task)
    for language in config.languages:
        train = subsample(task.load(language, "train"), config.train.max_items)
        test = subsample(task.load(language, "test"), config.eval.max_items)
        train_items, test_items = train_items + len(train), test_items + len(test)
        train_tokens += sum(_train_tokens(i, config, ratio, config.max_length_for(spec.name)) for i in train)
        test_tokens += sum(_test_tokens(i, config, ratio) for i in test)
    return TaskSizes(spec.name, train_items, test_items, train_tokens, test_tokens, False, "from the data")


def _published(spec: TaskSpec, benchmark: Benchmark, config: StudyConfig, ratio: float, why: str) -> TaskSizes:
    """The benchmark's published split sizes and typical prompt lengths, in place of its data."""
    n_train = min(benchmark.train_items, config.train.max_items or benchmark.train_items)
    n_test = min(benchmark.test_items, config.eval.max_items or benchmark.test_items)
    train_chars, test_chars = benchmark.train_chars, benchmark.test_chars
    train_chat = CHAT_TEMPLATE_TOKENS if config.train.chat_template and not benchmark.trains_on_text else 0
    per_train = min(train_chars / ratio + train_chat, config.max_length_for(spec.name))
    per_test = test_chars / ratio + (CHAT_TEMPLATE_TOKENS if config.eval.chat_template else 0)
    n_languages = len(config.languages)
    return TaskSizes(
        spec.name,
        n_train * n_languages,
        n_test * n_languages,
        per_train * n_train * n_languages,
        per_test * n_test * n_languages,
        True,
        f"{why}: published sizes, {n_train} train / {n_test} test items per language; typical prompts, "
        f"{train_chars} / {test_chars} characters",
    )


def task_sizes(spec: TaskSpec, config: StudyConfig, chars_per_token: float = CHARS_PER_TOKEN) -> TaskSizes:
    """Sizes from the data if it is local, else the published benchmark's documented sizes."""
    task = study_task(config, spec)
    if isinstance(task, PublishedTask) and not task.reads_local_files:
        return _published(spec, task.benchmark, config, chars_per_token, "hub data, not fetched")
    try:
        return _measured(spec, task, config, chars_per_token)
    except (DataError, OSError, ValueError) as error:
        if not isinstance(task, PublishedTask):
            raise
        return _published(spec, task.benchmark, config, chars_per_token, f"local data unreadable ({str(error).splitlines()[0]})")


def plan(
    config: StudyConfig, *, tflops: float = DEFAULT_TFLOPS, mfu: float = DEFAULT_MFU, chars_per_token: float = CHARS_PER_TOKEN
) -> StudyPlan:
    """Job counts, tokens, FLOPs and GPU-hours per model, without loading a model or data from the hub."""
    if chars_per_token <= 0:
        raise ConfigError(f"--chars-per-token must be positive, got {chars_per_token}")
    check_throughput(tflops, mfu)
    sizes = tuple(task_sizes(spec, config, chars_per_token) for spec in config.tasks)
    n_targets = len(cells(config))
    n_seeds = len(config.seeds)
    # A source's share of its task's training tokens: the task's languages count alike.
    tokens_per_source = {task.task: task.train_tokens / len(config.languages) for task in sizes}
    # Every model state is scored on every target.
    tokens_per_state = sum(t.test_tokens for t in sizes)
    rows = []
    for model in config.models:
        params, params_from = parameter_count(model)
        sources = config.source_cells(model)
        # One seed trains each chosen source once: the sum over them of items x epochs x tokens.
        train_tokens_per_seed = sum(tokens_per_source[cell.task] for cell in sources) * config.train.epochs
        n_train = len(sources) * n_seeds
        n_states = 1 + n_train
        train_tokens = train_tokens_per_seed * n_seeds
        eval_tokens = tokens_per_state * n_states
        train_flops = TRAIN_FLOPS_PER_PARAM_TOKEN * params * 1e9 * train_tokens
        eval_flops = EVAL_FLOPS_PER_PARAM_TOKEN * params * 1e9 * eval_tokens
        rows.append(
            ModelPlan(
                model,
                params,
                params_from,
                n_train,
                n_states,
                n_states * n_targets,
                train_tokens,
                eval_tokens,
                train_flops,
                eval_flops,
                gpu_hours(train_flops, tflops, mfu),
                gpu_hours(eval_flops, tflops, mfu),
            )
        )
    return StudyPlan(
        tuple(rows),
        sizes,
        max(len(config.source_cells(model)) for model in config.models),
        n_targets,
        n_seeds,
        tflops,
        mfu,
        chars_per_token,
        config.train.chat_template,
        config.eval.chat_template,
    )


__all__ = ["ModelPlan", "StudyPlan", "TaskSizes", "check_throughput", "gpu_hours", "parameter_count", "plan", "task_sizes"]
