"""The published study's four benchmarks, loaded through Hugging Face ``datasets``.

Each is one aligned dataset with a configuration per language and ``train`` and ``test``
splits (docs/protocol.md section 7). Rows become items by the published field names,
answer encodings and clean-up rules, and the dataset's ids are kept as item ids, so test sets
stay parallel across languages. The row checks and their messages are those of every
table-backed task (:class:`donors.tasks.files.RowTask`).

Options a study config may set under a benchmark:

* ``dataset_id``: a hub id (default: the published one), or a local folder laid out like the
  hub repository (a download of it); read with ``load_dataset(dataset_id, language, split=...)``;
* ``revision``: the hub revision to pin;
* ``data_dir``: instead, a folder holding one ``DatasetDict.save_to_disk`` per language,
  ``<data_dir>/<language>``;
* ``data_files``: instead, a path pattern with ``{language}`` and ``{split}`` to JSON Lines,
  CSV or Parquet files;
* ``languages`` (default: the eleven grid languages) and ``skip_bad_rows``.

Every way in yields a ``datasets.Dataset`` in the published schema, parsed by the same code.
Relative local paths resolve against the working directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from donors.grid import STUDY_LANGUAGES
from donors.tasks.data import DataError
from donors.tasks.files import BadRow, ExcludedRow, Parsed, Row, RowTask, Table, as_index, text
from donors.tasks.item import Split
from donors.tasks.registry import register_task

if TYPE_CHECKING:
    import datasets

OPTION_LETTERS = "ABCD"
OPTION_COLUMNS = ("option_a", "option_b", "option_c", "option_d")
BUILDER_OF_SUFFIX = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TASK_OPTIONS = ("dataset_id", "revision", "data_dir", "data_files", "languages", "skip_bad_rows")


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives, how one of its rows reads, and what its published splits hold.

    The split sizes are those of the published datasets (docs/protocol.md section 3); the typical
    prompt lengths are rough English-length figures. ``donors plan`` estimates with both when the
    data is not at hand.
    """

    name: str
    dataset_id: str
    id_column: str
    columns: tuple[str, ...]
    parse: Callable[[Mapping[str, Any]], Parsed]
    train_items: int  # per language, in the published train split
    test_items: int  # per language, in the published test split
    train_chars: int  # typical characters of one training text
    test_chars: int  # typical characters of one scored prompt with its choices
    trains_on_text: bool = False  # trained on a bare text target, never chat-wrapped (TruthfulQA)


def _required_text(row: Mapping[str, Any], column: str) -> str:
    value = text(row[column])
    if not value:
        raise BadRow(f"{column!r} is empty")
    return value


def _list(row: Mapping[str, Any], column: str) -> list[Any]:
    value = row[column]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise BadRow(f"{column!r} must be a list, not {value!r}")
    return list(value)


def _raw(value: Any) -> str:
    """A text field as is, unstripped: HellaSwag's clean-up decides what to strip."""
    return "" if value is None else str(value)


def parse_arc(row: Mapping[str, Any]) -> Parsed:
    """``Question: {instruction}``; a row whose answer is not a letter A-D is dropped, as published."""
    letter = text(row["answer"])
    if len(letter) != 1 or letter not in OPTION_LETTERS:
        raise ExcludedRow(f"answer {row['answer']!r} is not a letter A-D")
    question = f"Question: {_required_text(row, 'instruction')}"
    return Parsed(question, tuple(text(row[column]) for column in OPTION_COLUMNS), OPTION_LETTERS.index(letter))


def mmlu_answer_index(value: Any) -> int:
    """Global-MMLU's answer: a letter A-D, or an index 0-3."""
    letter = text(value)
    index = OPTION_LETTERS.index(letter) if len(letter) == 1 and letter in OPTION_LETTERS else as_index(value)
    if index is None or not 0 <= index < len(OPTION_LETTERS):
        raise BadRow(f"answer {value!r} is not among the choices: it must be a letter A-D or an index 0-3")
    return index


def parse_global_mmlu(row: Mapping[str, Any]) -> Parsed:
    choices = tuple(text(row[column]) for column in OPTION_COLUMNS)
    return Parsed(_required_text(row, "question"), choices, mmlu_answer_index(row["answer"]))


def clean_hellaswag(passage: str) -> str:
    """The published clean-up of HellaSwag's WikiHow text: ``[title]`` ends a sentence, other tags go."""
    cleaned = passage.strip().replace(" [title]", ". ")
    cleaned = re.sub(r"\[.*?\]", "", cleaned)
    return re.sub(" {2,}", " ", cleaned)


def _capitalised(passage: str) -> str:
    return passage[:1].upper() + passage[1:]


def parse_hellaswag(row: Mapping[str, Any]) -> Parsed:
    """Context ``{activity_label}: {ctx_a} {Ctx_b}`` and the endings, each cleaned up."""
    context = f"{_raw(row['activity_label'])}: {_raw(row['ctx_a'])} {_capitalised(_raw(row['ctx_b']))}"
    endings = tuple(clean_hellaswag(_raw(ending)) for ending in _list(row, "endings"))
    label = as_index(row["label"])
    if label is None or not 0 <= label < len(endings):
        raise BadRow(f"label {row['label']!r} is not among the choices: it must be an index 0-{len(endings) - 1}")
    return Parsed(clean_hellaswag(context), endings, label)


def parse_truthfulqa(row: Mapping[str, Any]) -> Parsed:
    """MC1: the one choice labelled 1 is right. Training reads the question and that answer whole."""
    question = _required_text(row, "question")
    choices = tuple(text(choice) for choice in _list(row, "mc1_targets_choices"))
    labels = [text(label) for label in _list(row, "mc1_targets_labels")]
    if len(labels) != len(choices) or set(labels) - {"0", "1"} or labels.count("1") != 1:
        raise BadRow(
            f"mc1_targets_labels {labels} must be one 0 or 1 per choice ({len(choices)} choices) "
            "with exactly one 1, so the answer is not among the choices"
        )
    answer = labels.index("1")
    return Parsed(f"Question: {question}", choices, answer, target_text=f"Question: {question}\nAnswer: {choices[answer]}")


# ARC is a short question and four short options.
ARC_CHALLENGE = Benchmark(
    "arc_challenge",
    "Dr4kl3s/arc_challenge_core_grid_seed42",
    "id",
    ("instruction", *OPTION_COLUMNS, "answer"),
    parse_arc,
    train_items=300,
    test_items=400,
    train_chars=300,
    test_chars=300,
)
# Global-MMLU's questions run longer; its train split is the dev split.
GLOBAL_MMLU = Benchmark(
    "global_mmlu",
    "Dr4kl3s/global_mmlu_lite_core_grid_seed42",
    "sample_id",
    ("question", *OPTION_COLUMNS, "answer"),
    parse_global_mmlu,
    train_items=215,
    test_items=400,
    train_chars=500,
    test_chars=500,
)
# HellaSwag has a context and four sentence-long endings.
HELLASWAG = Benchmark(
    "hellaswag",
    "Dr4kl3s/hellaswag_coregrid_seed42",
    "id",
    ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    parse_hellaswag,
    train_items=300,
    test_items=400,
    train_chars=750,
    test_chars=750,
)
# TruthfulQA trains on "Question: ...\nAnswer: ..." but is scored over all of its MC1 choices.
TRUTHFULQA = Benchmark(
    "truthfulqa",
    "Dr4kl3s/truthfulqa_coregrid_seed42",
    "truth_id",
    ("question", "mc1_targets_choices", "mc1_targets_labels"),
    parse_truthfulqa,
    train_items=300,
    test_items=400,
    train_chars=120,
    test_chars=350,
    trains_on_text=True,
)
BENCHMARKS = {benchmark.name: benchmark for benchmark in (ARC_CHALLENGE, GLOBAL_MMLU, HELLASWAG, TRUTHFULQA)}


class PublishedTask(RowTask):
    """One benchmark, one dataset configuration per language."""

    column_hint = "The benchmark needs its published schema (docs/protocol.md section 7): check dataset_id, revision or the local files"

    def __init__(
        self,
        benchmark: Benchmark,
        *,
        name: str | None = None,
        dataset_id: str | None = None,
        revision: str | None = None,
        data_dir: str | None = None,
        data_files: str | None = None,
        languages: Sequence[str] = STUDY_LANGUAGES,
        skip_bad_rows: bool = False,
    ) -> None:
        name = name or benchmark.name
        if data_dir and data_files:
            raise DataError(f"task {name!r}: set data_dir or data_files, not both")
        super().__init__(name, languages, id_column=benchmark.id_column, skip_bad_rows=skip_bad_rows)
        self.benchmark = benchmark
        self.dataset_id = dataset_id or benchmark.dataset_id
        self.revision = revision
        self.data_dir = Path.cwd() / Path(data_dir).expanduser() if data_dir else None
        self.data_files = str(Path.cwd() / Path(data_files).expanduser()) if data_files else None

    @property
    def reads_local_files(self) -> bool:
        """Whether loading reads local files only; the hub dataset (the default) would go to the network."""
        return self.data_dir is not None or self.data_files is not None or Path(self.dataset_id).expanduser().is_dir()

    def required_columns(self) -> tuple[str, ...]:
        return (self.benchmark.id_column, *self.benchmark.columns)

    def parse_row(self, values: Mapping[str, Any], language: str) -> Parsed:
        return self.benchmark.parse(values)

    def read_table(self, language: str, split: Split) -> Table:
        source = f"dataset {self.dataset_id!r} (config {language!r}, split {split!r})"
        if self.data_dir is not None:
            source += f" from {self.data_dir / language}"
        elif self.data_files is not None:
            source += f" from {self.data_files.format(language=language, split=split)}"
        try:
            dataset = self._open(language, split)
        except (OSError, ValueError) as error:
            raise DataError(
                f"{source}: cannot load it ({error}); check the dataset id and revision, that the hub is reachable or the dataset cached, and any local paths"
            ) from None
        rows = [Row(values, f"row {number}") for number, values in enumerate(dataset, start=1)]
        return Table(source, tuple(dataset.column_names), rows)

    def _open(self, language: str, split: Split) -> datasets.Dataset:
        import datasets

        if self.data_dir is not None:
            saved = datasets.load_from_disk(str(self.data_dir / language))
            if not isinstance(saved, datasets.DatasetDict) or split not in saved:
                raise ValueError(f"{self.data_dir / language} must be a DatasetDict saved with save_to_disk, with a {split!r} split")
            return saved[split]
        if self.data_files is not None:
            path = Path(self.data_files.format(language=language, split=split))
            builder = BUILDER_OF_SUFFIX.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"{path}: data_files must end in .jsonl, .json, .csv or .parquet")
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        return datasets.load_dataset(self.dataset_id, language, split=split, revision=self.revision)


def _published_task(benchmark: Benchmark, options: dict[str, Any]) -> PublishedTask:
    """Check the option names first, so a typo names the task rather than raising a TypeError."""
    name = options.pop("name", benchmark.name)
    if unknown := sorted(set(options) - set(TASK_OPTIONS)):
        raise DataError(f"task {name!r}: unknown options {unknown}; a published benchmark takes {', '.join(TASK_OPTIONS)}")
    return PublishedTask(benchmark, name=name, **options)


@register_task("arc_challenge")
def arc_challenge(**options: Any) -> PublishedTask:
    """ARC-Challenge, machine-translated (m_arc); 300 train / 400 test items per language."""
    return _published_task(ARC_CHALLENGE, options)


@register_task("global_mmlu")
def global_mmlu(**options: Any) -> PublishedTask:
    """Global-MMLU-Lite, human-translated; 215 train (its dev split) / 400 test per language."""
    return _published_task(GLOBAL_MMLU, options)


@register_task("hellaswag")
def hellaswag(**options: Any) -> PublishedTask:
    """HellaSwag, machine-translated (m_hellaswag); 300 train / 400 test per language."""
    return _published_task(HELLASWAG, options)


@register_task("truthfulqa")
def truthfulqa(**options: Any) -> PublishedTask:
    """TruthfulQA MC1, machine-translated (m_truthfulqa); trains on question and answer text."""
    return _published_task(TRUTHFULQA, options)
