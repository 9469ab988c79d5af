"""Tasks read from tables of rows: local JSONL, CSV, TSV or Parquet files with a column mapping.

A study config defines one under its own name, with ``source: files`` in its options and a
path pattern and column mapping (docs/local-tasks.md has the full format)::

    - name: sib200
      options:
        source: files
        path: ../shared/data/sib200/{language}/{split}.tsv
        language_codes: {en: eng_Latn, de: deu_Latn, zh: zho_Hans}
        columns: {id: index_id, question: text, answer: category}
        labels: ../shared/data/sib200/eng_Latn/labels.txt

Relative paths resolve against the working directory when the task is built (a task never
learns where its study config lives).

:class:`RowTask` holds what every table-backed task shares, the published benchmarks of
:mod:`donors.tasks.published` included. A row that cannot become an item stops the study with
a :class:`DataError` naming the file and the row, unless the user opts into skipping such
rows, and then the count is logged and kept in ``task.skipped``. The checks that keep a
split usable (rows left, unique ids, disjoint from the other split, test ids parallel across
languages) run here too, where a message can still name files and lines.

Limits (docs/local-tasks.md): 2 to 10 choices an item (the letters A-J); at most
:data:`MAX_QUESTION_CHARS` characters of question, :data:`MAX_CHOICE_CHARS` of each choice and
:data:`MAX_ITEM_CHARS` of the whole item; a JSON Lines line of at most :data:`MAX_LINE_CHARS`.
A row over a limit is a bad row like any other: it stops the study with the file, the row, the
field and the limit, or, with ``skip_bad_rows``, is skipped and counted. Nothing is ever cut.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from donors.errors import _quoted, describe_validation_error
from donors.tasks.data import DataError
from donors.tasks.item import LETTERS, SPLITS, Item, Split
from donors.tasks.registry import register_task

logger = logging.getLogger(__name__)

SKIP_HINT = "fix the row, or set skip_bad_rows: true in the task's options to skip such rows (they are counted and reported)"
FORMAT_OF_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}

FileFormat = Literal["jsonl", "csv", "tsv", "parquet"]

MIN_CHOICES, MAX_CHOICES = 2, len(LETTERS)
"""Choices an item may have: one letter each, A to J."""
MAX_QUESTION_CHARS = 10_000
"""Characters of an item's question (its template applied): some 2,500 tokens, far beyond what training keeps."""
MAX_CHOICE_CHARS = 2_000
"""Characters of one choice."""
MAX_ITEM_CHARS = 12_000
"""Characters of a whole item: question, choices and training target together."""
MAX_LINE_CHARS = 1_000_000
"""Characters of one JSON Lines line; a longer one is refused unread (a 50 MB line would take minutes to tokenise)."""


class BadRow(ValueError):
    """A row that cannot become an item; the message says what is wrong with it."""


class ExcludedRow(BadRow):
    """A row the data's own clean-up rules drop: skipped and counted whatever ``skip_bad_rows`` says."""


@dataclass(frozen=True)
class Row:
    """One record of a table, with where it sits (``line 7``, ``row 7``) for messages."""

    values: Mapping[str, Any]
    position: str
    problem: str | None = None
    """Why the row as read cannot be an item (a CSV row with fields missing); it is then a bad row."""


@dataclass(frozen=True)
class Table:
    """The rows of one language and split, and what they were read from (a file, a dataset)."""

    source: str
    columns: tuple[str, ...]
    rows: list[Row]


@dataclass(frozen=True)
class Parsed:
    """What one row says, before it becomes an :class:`Item`."""

    question: str
    choices: tuple[str, ...]
    answer_index: int
    target_text: str | None = None


@dataclass(frozen=True)
class LoadedSplit:
    """A split's items, with where each id came from, to name rows in later checks."""

    source: str
    items: list[Item]
    positions: dict[str, str]
    skipped: int


def text(value: Any) -> str:
    """A cell as stripped text; a missing cell (None, NaN) as the empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def as_index(value: Any) -> int | None:
    """An integer cell (``2`` or ``"2"``), or None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    cell = text(value)
    return int(cell) if cell.isdigit() else None


def choice_text(value: Any, which: str) -> str:
    """A choice cell as stripped text: a string or an integer; missing (None, NaN) reads as empty.

    A float, a boolean, a list or a mapping is refused: ``0.1 + 0.2`` would show as 0.30000000000000004, ``true`` as
    True, a nested list as its Python spelling.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow(f"{which} is a {type(value).__name__} ({_quoted(value)}), not text; write each choice as a string")
    return str(value).strip()


def check_choices(choices: Sequence[str]) -> None:
    """2 to 10 choices (the letters A-J), all different: two equal choices make the answer ambiguous."""
    if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        raise BadRow(
            f"{len(choices)} choices; an item has {MIN_CHOICES} to {MAX_CHOICES}, one letter each (A-{LETTERS[-1]}): "
            "split the row or drop choices"
        )
    seen: dict[str, int] = {}
    for index, choice in enumerate(choices):
        if choice and (first := seen.setdefault(choice, index)) != index:
            raise BadRow(
                f"choices {LETTERS[first]} and {LETTERS[index]} are both {_quoted(choice)}; an item's choices must differ, "
                "or the answer is ambiguous"
            )


def check_lengths(parsed: Parsed) -> None:
    """The item's size within the documented limits; a row over one is a bad row (never cut)."""
    if len(parsed.question) > MAX_QUESTION_CHARS:
        raise BadRow(f"the question is {len(parsed.question):,} characters; at most {MAX_QUESTION_CHARS:,}: shorten it")
    for index, choice in enumerate(parsed.choices):
        if len(choice) > MAX_CHOICE_CHARS:
            letter = LETTERS[index] if index < len(LETTERS) else str(index + 1)
            raise BadRow(f"choice {letter} is {len(choice):,} characters; at most {MAX_CHOICE_CHARS:,}: shorten it")
    total = len(parsed.question) + sum(map(len, parsed.choices)) + len(parsed.target_text or "")
    if total > MAX_ITEM_CHARS:
        raise BadRow(f"the item (question and choices) is {total:,} characters; at most {MAX_ITEM_CHARS:,}: shorten it")


def _listed(ids: Sequence[str], positions: Mapping[str, str], limit: int = 3) -> str:
    shown = ", ".join(f"{item_id!r} ({positions[item_id]})" for item_id in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


class RowTask:
    """A task whose items come from one table per language and split.

    Subclasses say where a table comes from (:meth:`read_table`), which columns it must have
    (:meth:`required_columns`) and what a row means (:meth:`parse_row`); this class turns rows
    into items and checks them. Each split is read once. ``skipped[(language, split)]`` is
    the number of rows skipped there, set when that split is loaded.
    """

    column_hint = "Fix the column mapping in the task's options, or the file"

    def __init__(self, name: str, languages: Sequence[str], *, id_column: str, skip_bad_rows: bool = False) -> None:
        self.name = name
        self.languages = tuple(languages)
        self.id_column = id_column
        self.skip_bad_rows = skip_bad_rows
        self.skipped: dict[tuple[str, Split], int] = {}
        self._loaded: dict[tuple[str, Split], LoadedSplit] = {}

    def read_table(self, language: str, split: Split) -> Table:
        raise NotImplementedError

    def required_columns(self) -> tuple[str, ...]:
        raise NotImplementedError

    def parse_row(self, values: Mapping[str, Any], language: str) -> Parsed:
        """The row's question, choices and answer; raises :class:`BadRow` for a row that has none."""
        raise NotImplementedError

    def load(self, language: str, split: Split) -> list[Item]:
        """Items of one language and split, in table order.

        Train and test are checked for shared ids, and test sets for equal ids, against the
        splits already loaded, so a study that loads every split it uses checks them all.
        """
        if language not in self.languages:
            raise DataError(f"task {self.name!r} has no language {language!r}; it has {', '.join(self.languages)}")
        if split not in SPLITS:
            raise DataError(f"task {self.name!r} has no split {split!r}; it has {', '.join(SPLITS)}")
        if (language, split) not in self._loaded:
            loaded = self._read_split(language, split)
            self._check_disjoint(language, split, loaded)
            if split == "test":
                self._check_parallel(language, loaded)
            self._loaded[(language, split)] = loaded
            self.skipped[(language, split)] = loaded.skipped
        return list(self._loaded[(language, split)].items)

    def _read_split(self, language: str, split: Split) -> LoadedSplit:
        table = self.read_table(language, split)
        if not table.rows:
            raise DataError(
                f"{table.source}: no items for task {self.name!r}, it has no rows; fill it, or drop language {language!r} from the study"
            )
        missing = [column for column in self.required_columns() if column not in table.columns]
        if missing:
            raise DataError(
                f"{table.source}: missing column {', '.join(map(repr, missing))}; its columns are {list(table.columns)}. {self.column_hint}"
            )
        items: list[Item] = []
        positions: dict[str, str] = {}
        skipped: list[str] = []
        for row in table.rows:
            where = self._where(row)
            try:
                item = self._item(row, language)
            except BadRow as problem:
                if not (self.skip_bad_rows or isinstance(problem, ExcludedRow)):
                    raise DataError(f"{table.source}, {where}: {problem}; {SKIP_HINT}") from None
                skipped.append(f"{where}: {problem}")
                continue
            if item.id in positions:
                raise DataError(
                    f"{table.source}: id {item.id!r} is on both {positions[item.id]} and {row.position}; "
                    "every row needs its own id: remove the repeated row or give it a new id"
                )
            positions[item.id] = row.position
            items.append(item)
        if skipped:
            self._report_skipped(table, skipped)
        if not items:
            raise DataError(
                f"{table.source}: no items for task {self.name!r}, all {len(skipped)} rows were skipped as bad; fix them, or drop language {language!r} from the study"
            )
        return LoadedSplit(table.source, items, positions, len(skipped))

    def _report_skipped(self, table: Table, skipped: list[str]) -> None:
        """Skipping is never silent: a warning with the count and the first rows and reasons."""
        examples = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        logger.warning("task %r, %s: skipped %d of %d rows (%s)", self.name, table.source, len(skipped), len(table.rows), examples)

    def _where(self, row: Row) -> str:
        item_id = text(row.values.get(self.id_column))
        return f"{row.position} (id {item_id!r})" if item_id else row.position

    def _item(self, row: Row, language: str) -> Item:
        if row.problem:
            raise BadRow(row.problem)
        item_id = text(row.values.get(self.id_column))
        if not item_id:
            raise BadRow(f"no id in column {self.id_column!r}")
        parsed = self.parse_row(row.values, language)
        if not parsed.question:
            raise BadRow("the question is empty")
        if not all(parsed.choices):
            raise BadRow(f"a choice is empty: {_quoted(list(parsed.choices))}")
        check_lengths(parsed)
        try:
            return Item(
                id=item_id,
                task=self.name,
                language=language,
                question=parsed.question,
                choices=parsed.choices,
                answer_index=parsed.answer_index,
                target_text=parsed.target_text,
            )
        except ValueError as error:
            raise BadRow(str(error)) from None

    def _check_disjoint(self, language: str, split: Split, loaded: LoadedSplit) -> None:
        other = self._loaded.get((language, "test" if split == "train" else "train"))
        if other is None:
            return
        train, test = (loaded, other) if split == "train" else (other, loaded)
        shared = [item_id for item_id in train.positions if item_id in test.positions]
        if shared:
            raise DataError(
                f"task {self.name!r}, language {language!r}: {len(shared)} ids are in both train and test: "
                f"{_listed(shared, train.positions)} of {train.source}, and {_listed(shared, test.positions)} of {test.source}. "
                "Train and test must be disjoint: remove these rows from one of the two"
            )

    def _check_parallel(self, language: str, loaded: LoadedSplit) -> None:
        """Test ids must equal those of the first language whose test split was loaded."""
        reference = next(
            ((other, split) for (other, kind), split in self._loaded.items() if kind == "test" and other != language),
            None,
        )
        if reference is None:
            return
        reference_language, reference_split = reference
        only_here = [i for i in loaded.positions if i not in reference_split.positions]
        only_there = [i for i in reference_split.positions if i not in loaded.positions]
        if not (only_here or only_there):
            return
        differences = []
        if only_here:
            differences.append(f"only in {loaded.source}: {_listed(only_here, loaded.positions)}")
        if only_there:
            differences.append(f"only in {reference_split.source}: {_listed(only_there, reference_split.positions)}")
        skipped = loaded.skipped + reference_split.skipped
        raise DataError(
            f"task {self.name!r}: the test ids of {language!r} and {reference_language!r} differ ({'; '.join(differences)})"
            + (f"; {skipped} bad rows were skipped in these files" if skipped else "")
            + ". Test sets must be parallel, the same ids in every language: add the missing rows, "
            "or remove those ids from every language"
        )


class FileColumns(BaseModel):
    """Which columns hold the id, the question text, the choices and the answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    question: str | list[str]
    answer: str
    choices: str | list[str] | None = None
    """One column holding a list of choices, or a list of columns, one choice each."""


class FileTaskOptions(BaseModel):
    """The options of a ``files`` task, as written in the study config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: FileFormat | None = None
    languages: list[str] | None = None
    language_codes: dict[str, str] = {}
    splits: dict[Literal["train", "test"], str] = {}
    columns: FileColumns
    question_template: str = "{question}"
    question_separator: str = "\n"
    labels: list[str] | str | None = None
    label_names: dict[str, dict[str, str]] = {}
    answer_type: Literal["letter", "index", "label"] | None = None
    skip_bad_rows: bool = False

    @model_validator(mode="after")
    def _one_source_of_choices(self) -> FileTaskOptions:
        if (self.columns.choices is None) == (self.labels is None):
            raise ValueError(
                "give the choices one way: columns.choices (a list column, or one column per choice) or labels (a fixed label set)"
            )
        if self.labels is None and self.answer_type is None:
            raise ValueError("set answer_type: letter (A, B, ...), index (0-based) or label (the correct choice's text)")
        if self.label_names and self.labels is None:
            raise ValueError("label_names translates labels; set labels too")
        return self


def _as_list(columns: str | list[str] | None) -> list[str]:
    if columns is None:
        return []
    return [columns] if isinstance(columns, str) else list(columns)


def _fields(template: str) -> list[str]:
    """The ``{placeholders}`` of a format string."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _resolve(path: str, base_dir: Path) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else base_dir / resolved


def read_text(path: Path) -> str:
    """A whole file as UTF-8 text (a byte-order mark is allowed); other bytes stop with the line they are on."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        line = data[:offset].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset:,}); save the file as UTF-8 "
            "(a spreadsheet's 'CSV UTF-8'), or convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_delimited(path: Path, delimiter: str) -> Table:
    """CSV or TSV with a header row; positions are the file's 1-based line numbers.

    A row with fewer fields than the header is a bad row; extra fields are too, unless they are empty (a trailing
    delimiter).
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    rows: list[Row] = []
    try:
        header = next(reader, [])
        for fields in reader:
            if not fields:
                continue  # an empty line, as csv.DictReader skips it
            position = f"line {reader.line_num}"
            values = dict(zip(header, fields))
            problem = None
            if len(fields) < len(header) or any(field.strip() for field in fields[len(header) :]):
                problem = (
                    f"{len(fields)} fields where the header has {len(header)}; a cell that holds the delimiter "
                    f"({delimiter!r}) or a line break must be in double quotes"
                )
            rows.append(Row(values, position, problem))
    except csv.Error as error:
        raise DataError(
            f"{path}, line {reader.line_num}: cannot be read as {'TSV' if delimiter == chr(9) else 'CSV'} ({error}); a field holds at "
            f"most {csv.field_size_limit():,} characters and no NUL byte: fix the file there"
        ) from None
    return Table(str(path), tuple(header), rows)


def read_jsonl(path: Path) -> Table:
    """One JSON object a line; blank lines are allowed, a line that is not an object is not."""
    rows: list[Row] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(io.StringIO(read_text(path)), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            rows.append(Row({}, f"line {number}", f"the line is {len(line):,} characters; at most {MAX_LINE_CHARS:,}, left unread"))
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}); write one JSON object per line") from None
        if not isinstance(values, dict):
            raise DataError(f"{path}, line {number}: a JSON {type(values).__name__}, not an object; write one JSON object per line")
        columns.update(dict.fromkeys(values))
        rows.append(Row(values, f"line {number}"))
    return Table(str(path), tuple(columns), rows)


def read_parquet(path: Path) -> Table:
    """A Parquet file; positions are 1-based row numbers, as a Parquet file has no lines."""
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    rows = [Row(values, f"row {number}") for number, values in enumerate(table.to_pylist(), start=1)]
    return Table(str(path), tuple(table.column_names), rows)


READERS: dict[FileFormat, Callable[[Path], Table]] = {
    "jsonl": read_jsonl,
    "csv": lambda path: read_delimited(path, ","),
    "tsv": lambda path: read_delimited(path, "\t"),
    "parquet": read_parquet,
}


def read_labels(labels: list[str] | str, base_dir: Path) -> tuple[str, ...]:
    """A label set from the config's list, or from a file of one label a line (SIB-200's labels.txt)."""
    if isinstance(labels, list):
        return tuple(text(label) for label in labels)
    path = _resolve(labels, base_dir)
    if not path.is_file():
        raise DataError(f"{path}: no such labels file; labels is a list, or a file with one label a line")
    return tuple(line.strip() for line in read_text(path).splitlines() if line.strip())


class FileTask(RowTask):
    """A multiple-choice task from local files, one per language and split."""

    def __init__(self, name: str, options: FileTaskOptions, *, base_dir: Path) -> None:
        languages = options.languages or list(options.language_codes)
        if not languages:
            raise DataError(f"task {name!r}: list its languages, in languages or as the keys of language_codes")
        super().__init__(name, languages, id_column=options.columns.id, skip_bad_rows=options.skip_bad_rows)
        self.options = options
        self.path_pattern = str(_resolve(options.path, base_dir))
        self.format = options.format or self._format_from_suffix()
        self.splits: dict[str, str] = {"train": "train", "test": "test", **options.splits}
        self.labels = read_labels(options.labels, base_dir) if options.labels is not None else None
        self.answer_type = options.answer_type or "label"
        self._template_columns = [field for field in _fields(options.question_template) if field != "question"]
        self._check_path_pattern()
        self._check_labels()
        if len(_as_list(options.columns.choices)) > MAX_CHOICES:
            raise DataError(
                f"task {name!r}: columns.choices lists {len(_as_list(options.columns.choices))} columns; an item has at most "
                f"{MAX_CHOICES} choices, one letter each (A-{LETTERS[-1]})"
            )

    def _format_from_suffix(self) -> FileFormat:
        suffix = Path(self.path_pattern).suffix.lower()
        if suffix not in FORMAT_OF_SUFFIX:
            raise DataError(
                f"task {self.name!r}: cannot tell the format of {self.path_pattern!r} from {suffix or 'no suffix'!r}; set format: jsonl, csv, tsv or parquet"
            )
        return FORMAT_OF_SUFFIX[suffix]  # type: ignore[return-value]

    def _check_path_pattern(self) -> None:
        fields = set(_fields(self.path_pattern))
        if unknown := fields - {"language", "split"}:
            raise DataError(
                f"task {self.name!r}: path {self.path_pattern!r} has unknown placeholders {sorted(unknown)}; use {{language}} and {{split}}"
            )
        if "split" not in fields:
            raise DataError(
                f"task {self.name!r}: path {self.path_pattern!r} needs a {{split}} placeholder: train and test are separate files"
            )
        if "language" not in fields and len(self.languages) > 1:
            raise DataError(
                f"task {self.name!r}: path {self.path_pattern!r} needs a {{language}} placeholder: each language is a separate file"
            )

    def _check_labels(self) -> None:
        if self.labels is None:
            return
        if not 2 <= len(self.labels) <= len(LETTERS) or len(set(self.labels)) != len(self.labels):
            raise DataError(f"task {self.name!r}: labels {list(self.labels)} must be 2 to {len(LETTERS)} distinct labels")
        for language, names in self.options.label_names.items():
            if language not in self.languages:
                raise DataError(
                    f"task {self.name!r}: label_names has language {language!r}, which the task does not have ({', '.join(self.languages)})"
                )
            if missing := [label for label in self.labels if not text(names.get(label))]:
                raise DataError(
                    f"task {self.name!r}: label_names.{language} lacks a name for {missing}; name every label, or drop the language to show the labels as they are"
                )
            if len({text(names[label]) for label in self.labels}) != len(self.labels):
                raise DataError(
                    f"task {self.name!r}: label_names.{language} gives two labels the same name; the choices must read differently"
                )

    def path_of(self, language: str, split: Split) -> Path:
        code = self.options.language_codes.get(language, language)
        return Path(self.path_pattern.format(language=code, split=self.splits[split]))

    def read_table(self, language: str, split: Split) -> Table:
        path = self.path_of(language, split)
        if not path.is_file():
            raise DataError(
                f"{path}: no such file (task {self.name!r}, language {language!r}, split {split!r}); "
                f"fix path, splits or language_codes in the task's options (path pattern {self.path_pattern!r})"
            )
        return READERS[self.format](path)

    def required_columns(self) -> tuple[str, ...]:
        columns = self.options.columns
        needed = [columns.id, *_as_list(columns.question), *_as_list(columns.choices), columns.answer, *self._template_columns]
        return tuple(dict.fromkeys(needed))

    def parse_row(self, values: Mapping[str, Any], language: str) -> Parsed:
        choices = self._choices(values, language)
        check_choices(choices)
        return Parsed(self._question(values), choices, self._answer_index(values, choices))

    def _question(self, values: Mapping[str, Any]) -> str:
        for column in _as_list(self.options.columns.question):
            if isinstance(values.get(column), (bool, list, dict)):
                value = values[column]
                raise BadRow(f"question column {column!r} holds a {type(value).__name__} ({_quoted(value)}), not text")
        joined = self.options.question_separator.join(text(values.get(c)) for c in _as_list(self.options.columns.question)).strip()
        if not joined:
            raise BadRow(f"the question column {self.options.columns.question!r} is empty")
        fields = {column: text(values.get(column)) for column in self._template_columns}
        return self.options.question_template.format_map({**fields, "question": joined}).strip()

    def _choices(self, values: Mapping[str, Any], language: str) -> tuple[str, ...]:
        if self.labels is not None:
            names = self.options.label_names.get(language, {})
            return tuple(text(names.get(label, label)) for label in self.labels)
        columns = self.options.columns.choices
        if isinstance(columns, list):
            return tuple(choice_text(values.get(column), f"choice column {column!r}") for column in columns)
        cell = _list_cell(values.get(columns), columns)
        return tuple(choice_text(choice, f"choice {number} of column {columns!r}") for number, choice in enumerate(cell, start=1))

    def _answer_index(self, values: Mapping[str, Any], choices: tuple[str, ...]) -> int:
        column = self.options.columns.answer
        raw = values.get(column)
        if self.answer_type == "letter":
            letter = text(raw).upper()
            index = LETTERS.find(letter) if len(letter) == 1 else -1
            allowed = f"a letter A-{LETTERS[len(choices) - 1]}"
        elif self.answer_type == "index":
            index = as_index(raw)
            allowed = f"an index 0-{len(choices) - 1}"
        else:
            options = self.labels if self.labels is not None else choices
            index = options.index(text(raw)) if text(raw) in options else -1
            allowed = f"one of {list(options)}"
        if index is None or not 0 <= index < len(choices):
            raise BadRow(f"answer {raw!r} in column {column!r} is not among the choices: it must be {allowed}")
        return index


def _list_cell(value: Any, column: str) -> list[Any]:
    """A list of choices; CSV and TSV cells hold it as a JSON list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, list):
        raise BadRow(f"column {column!r} must hold a list of choices (a JSON list in CSV/TSV), not {value!r}")
    return value


@register_task("files")
def files_task(name: str = "files", **options: Any) -> FileTask:
    """A task from local files under the user's name: ``{name: ..., options: {source: files, ...}}``."""
    try:
        parsed = FileTaskOptions.model_validate(options)
    except ValidationError as error:
        heading = f"task {name!r}: invalid options for a files task (docs/local-tasks.md lists them)"
        raise DataError(describe_validation_error(error, heading, noun="option")) from None
    return FileTask(name, parsed, base_dir=Path.cwd())
