"""The results store: one SQLite file per study, the only state the stages share.

Every write is one transaction, so a process killed at any moment leaves either all of a
unit of work (an adapter's record, one target's predictions and score) or none of it.
Rerunning skips what is there; nothing is written twice (primary keys, ``INSERT OR REPLACE``
only where a retry must overwrite a failed attempt).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from donors.errors import DonorsError
from donors.grid import Cell
from donors.records import AdapterRecord, ItemPrediction, ModelState, TargetResult, eval_job_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS adapters (
    adapter_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    source_task TEXT NOT NULL,
    source_language TEXT NOT NULL,
    seed INTEGER NOT NULL,
    path TEXT NOT NULL,
    recipe_hash TEXT NOT NULL,
    train_ids TEXT NOT NULL,
    validation_ids TEXT NOT NULL,
    best_epoch INTEGER,
    validation_losses TEXT NOT NULL,
    train_seconds REAL,
    versions TEXT NOT NULL,
    created TEXT DEFAULT (datetime('now')),
    sha256 TEXT
);
CREATE TABLE IF NOT EXISTS data_fingerprints (
    split TEXT NOT NULL,
    task TEXT NOT NULL,
    language TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (split, task, language)
);
CREATE TABLE IF NOT EXISTS failures (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    created TEXT DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS running (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    started TEXT DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS predictions (
    state_id TEXT NOT NULL,
    target_task TEXT NOT NULL,
    target_language TEXT NOT NULL,
    item_id TEXT NOT NULL,
    gold INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    logprobs TEXT NOT NULL,
    predicted_norm INTEGER,
    PRIMARY KEY (state_id, target_task, target_language, item_id)
);
CREATE TABLE IF NOT EXISTS rotated_predictions (
    state_id TEXT NOT NULL,
    target_task TEXT NOT NULL,
    target_language TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rotation INTEGER NOT NULL,
    gold INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    logprobs TEXT NOT NULL,
    predicted_norm INTEGER,
    PRIMARY KEY (state_id, target_task, target_language, item_id, rotation)
);
CREATE TABLE IF NOT EXISTS scores (
    state_id TEXT NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER,
    source_task TEXT,
    source_language TEXT,
    target_task TEXT NOT NULL,
    target_language TEXT NOT NULL,
    n INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    accuracy_norm REAL NOT NULL,
    predicted_counts TEXT,
    gold_counts TEXT,
    dtype TEXT,
    PRIMARY KEY (state_id, target_task, target_language)
);
"""

ADDED_COLUMNS = {
    "predictions": {"predicted_norm": "INTEGER"},
    "scores": {"predicted_counts": "TEXT", "gold_counts": "TEXT", "dtype": "TEXT"},
    "adapters": {"sha256": "TEXT"},
}
"""Columns added since the first stores were written: an older store gains them when opened."""
READABLE_WITHOUT = {("scores", "dtype"), ("adapters", "sha256")}
"""Added columns whose absence every reader tolerates (absent: not recorded), so a read-only older store still opens."""

RECORD_FAILURE = (
    "INSERT INTO failures (job_id, kind, error) VALUES (?, ?, ?) "
    "ON CONFLICT(job_id) DO UPDATE SET error = excluded.error, attempts = attempts + 1"
)
"""A job's failure: a new row, or the latest error and one more attempt on the row it has."""

FINISHED = "DELETE FROM running WHERE job_id = ?"
"""A job that came back, scored or failed, leaves the in-flight list in the transaction that records it."""

STORE_NAME = "results.sqlite"


def store_path(study_dir: str | Path) -> Path:
    """Where a study directory keeps its store."""
    return Path(study_dir) / STORE_NAME


BUSY_TIMEOUT = 600.0
"""Seconds a write waits for readers: with a rollback journal a long ``donors analyze`` or
``status`` read holds the store, and the run's next write must outwait it, not fail."""


def _locked(error: sqlite3.Error) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def _unwritable(error: sqlite3.Error) -> bool:
    """The store or its folder can no longer be written (read-only, immutable, removed, disk full)."""
    text = str(error)
    return any(cause in text for cause in ("readonly", "read-only", "unable to open", "disk I/O", "disk is full", "no such file"))


def _locked_message(path: Path) -> str:
    return (
        f"{path}: the results store stayed locked by another process for {BUSY_TIMEOUT:.0f} s (a long `donors analyze`, "
        "`report` or `status` reading it, or a process stuck on it). Nothing stored is lost: let it finish or stop it, "
        "then run again"
    )


class StoreUnreadable(DonorsError):
    """The store file exists but is not a readable, writable SQLite store."""


class ResultsStore:
    """Typed reads and atomic writes over the study's SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._refuse_emptied_store()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
        try:
            # A rollback journal, not WAL: WAL's index is a memory-mapped file, and a write to it after
            # the folder or file became read-only kills the process with SIGBUS instead of raising.
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._upgrade()
        except sqlite3.DatabaseError as error:
            self._db.close()
            if _locked(error):
                raise StoreUnreadable(_locked_message(self.path)) from None
            raise StoreUnreadable(
                f"{self.path}: cannot be used as this study's results store ({error}). If the file was truncated or "
                "overwritten, restore it from a backup, or move it away to start the study afresh (finished adapters "
                "and scores would then be redone); if the folder is read-only, make it writable"
            ) from None

    def _refuse_emptied_store(self) -> None:
        """An empty store file in a study that has run is a lost store, never a new one: starting over would hide it."""
        if not self.path.is_file() or self.path.stat().st_size:
            return
        ran = [name for name in ("config.json", "adapters", "report.html") if (self.path.parent / name).exists()]
        if ran:
            raise StoreUnreadable(
                f"{self.path} is empty (0 bytes), but its folder holds a study that has run ({', '.join(ran)}): the "
                "store was truncated. Restore it from a backup, or delete the empty file to start the study afresh "
                "(every adapter and score would be redone)"
            )

    def _upgrade(self) -> None:
        """Add the columns an older store lacks, and fill its option counts from its own predictions.

        A store that cannot be written (a read-only copy of a finished study) and lacks only
        columns the readers do without (:data:`READABLE_WITHOUT`) is read as it is.
        """
        missing = []
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            missing += [(table, column, kind) for column, kind in columns.items() if column not in present]
        if not missing:
            return
        try:
            with self._transaction() as db:
                for table, column, kind in missing:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except StoreUnreadable:
            if all((table, column) in READABLE_WITHOUT for table, column, _ in missing):
                return
            raise
        self._fill_option_counts()

    def _fill_option_counts(self) -> None:
        rows = self._db.execute(
            "SELECT s.state_id, s.target_task, s.target_language, p.gold, p.predicted, p.logprobs FROM scores s "
            "JOIN predictions p USING (state_id, target_task, target_language) WHERE s.predicted_counts IS NULL"
        ).fetchall()
        counts: dict[tuple, tuple[list[int], list[int]]] = {}
        for state_id, task, language, gold, predicted, logprobs in rows:
            width = len(json.loads(logprobs))  # as summarize counts: as wide as the widest item of the target
            predicted_counts, gold_counts = counts.setdefault((state_id, task, language), ([], []))
            for tally, index in ((predicted_counts, predicted), (gold_counts, gold)):
                tally.extend([0] * (width - len(tally)))
                tally[index] += 1
        with self._transaction() as db:
            db.executemany(
                "UPDATE scores SET predicted_counts = ?, gold_counts = ? WHERE state_id = ? AND target_task = ? AND target_language = ?",
                [(json.dumps(p), json.dumps(g), *key) for key, (p, g) in counts.items()],
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; a store that can no longer be written stops the run with the file and the fix."""
        try:
            with self._db:
                yield self._db
        except sqlite3.OperationalError as error:
            if _locked(error):
                raise StoreUnreadable(_locked_message(self.path)) from error
            if not _unwritable(error):
                raise
            raise StoreUnreadable(
                f"{self.path}: cannot write the results store ({error}). Make the study folder and its files writable "
                "(and not immutable), with free disk space, then run again: finished work is kept, and the unit of "
                "work that was being written is redone"
            ) from error

    # -- study metadata -------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", (key, value))

    # -- adapters ------------------------------------------------------------------
    def add_adapter(self, record: AdapterRecord) -> None:
        """Store a trained adapter; its training job is no longer failed or in flight."""
        row = asdict(record)
        for key in ("train_ids", "validation_ids", "validation_losses", "versions"):
            row[key] = json.dumps(row[key])
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO adapters ({columns}) VALUES ({marks})", tuple(row.values()))
            db.execute("DELETE FROM failures WHERE job_id = ?", (record.adapter_id,))
            db.execute(FINISHED, (record.adapter_id,))

    def adapter(self, adapter_id: str) -> AdapterRecord | None:
        cursor = self._db.execute("SELECT * FROM adapters WHERE adapter_id = ?", (adapter_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        data = dict(zip([c[0] for c in cursor.description], row))
        data.pop("created")
        for key in ("train_ids", "validation_ids", "validation_losses", "versions"):
            data[key] = json.loads(data[key])
        data["train_ids"] = tuple(data["train_ids"])
        data["validation_ids"] = tuple(data["validation_ids"])
        data["validation_losses"] = tuple(data["validation_losses"])
        return AdapterRecord(**data)

    def adapter_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT adapter_id FROM adapters")}

    def set_adapter_digest(self, adapter_id: str, sha256: str) -> None:
        """Record the digest of an adapter stored before digests were (its files as they are now)."""
        with self._transaction() as db:
            db.execute("UPDATE adapters SET sha256 = ? WHERE adapter_id = ?", (sha256, adapter_id))

    def discard_adapter(self, adapter_id: str, reason: str) -> None:
        """Forget an adapter that can no longer be trusted, with every score of its state, and say why.

        The state is then pending as a whole: retrained, then rescored, so no state's scores
        ever mix two adapters.
        """
        with self._transaction() as db:
            db.execute("DELETE FROM adapters WHERE adapter_id = ?", (adapter_id,))
            self._delete_scores(db, "state_id = ?", (adapter_id,))
            db.execute(RECORD_FAILURE, (adapter_id, "train", reason))

    # -- data fingerprints ------------------------------------------------------------
    def data_fingerprints(self) -> dict[tuple[str, Cell], str]:
        """The digest of each (split, cell)'s items as the stored work used them."""
        rows = self._db.execute("SELECT split, task, language, digest FROM data_fingerprints")
        return {(split, Cell(task, language)): digest for split, task, language, digest in rows}

    def set_data_fingerprints(self, digests: dict[tuple[str, Cell], str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO data_fingerprints (split, task, language, digest) VALUES (?, ?, ?, ?)",
                [(split, cell.task, cell.language, digest) for (split, cell), digest in digests.items()],
            )

    def work_using(self, split: str, cell: Cell) -> tuple[int, int]:
        """(adapters, scored (state, target) pairs) made from ``cell``'s ``split``: trained on it, or scored on it."""
        if split == "train":
            adapters = [r[0] for r in self._db.execute(*self._trained_on(cell))]
            marks = ", ".join("?" for _ in adapters)
            n_scores = self._db.execute(f"SELECT COUNT(*) FROM scores WHERE state_id IN ({marks})", adapters).fetchone()[0]
            return len(adapters), n_scores
        where = "target_task = ? AND target_language = ?"
        return 0, self._db.execute(f"SELECT COUNT(*) FROM scores WHERE {where}", (cell.task, cell.language)).fetchone()[0]

    def discard_work_using(self, split: str, cell: Cell) -> None:
        """Delete what ``work_using`` counts, in one transaction: it is redone on this run."""
        with self._transaction() as db:
            if split == "train":
                adapters = [(r[0],) for r in db.execute(*self._trained_on(cell))]
                db.executemany("DELETE FROM adapters WHERE adapter_id = ?", adapters)
                for (adapter_id,) in adapters:
                    self._delete_scores(db, "state_id = ?", (adapter_id,))
            else:
                self._delete_scores(db, "target_task = ? AND target_language = ?", (cell.task, cell.language))

    @staticmethod
    def _trained_on(cell: Cell) -> tuple[str, tuple[str, str]]:
        return "SELECT adapter_id FROM adapters WHERE source_task = ? AND source_language = ?", (cell.task, cell.language)

    @staticmethod
    def _delete_scores(db: sqlite3.Connection, where: str, args: tuple) -> None:
        for table in ("scores", "predictions", "rotated_predictions"):
            db.execute(f"DELETE FROM {table} WHERE {where}", args)

    # -- failures -------------------------------------------------------------------
    def record_failure(self, job_id: str, kind: str, error: str) -> None:
        """Record that a job failed (one more attempt if it had failed before); it is no longer in flight."""
        with self._transaction() as db:
            db.execute(RECORD_FAILURE, (job_id, kind, error))
            db.execute(FINISHED, (job_id,))

    def failures(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM failures ORDER BY job_id", self._db)

    # -- jobs in flight ---------------------------------------------------------------
    def mark_running(self, job_ids: Iterable[str], kind: str) -> None:
        """Jobs handed to a worker and not yet back; advisory, for ``donors status``."""
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO running (job_id, kind) VALUES (?, ?)", [(j, kind) for j in job_ids])

    def clear_running(self, job_ids: Iterable[str] | None = None) -> None:
        """Forget these jobs (or all: a new driver starts with nothing in flight)."""
        with self._transaction() as db:
            if job_ids is None:
                db.execute("DELETE FROM running")
            else:
                db.executemany("DELETE FROM running WHERE job_id = ?", [(j,) for j in job_ids])

    def running(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT job_id FROM running")}

    # -- evaluation -----------------------------------------------------------------
    def add_target_result(self, state: ModelState, result: TargetResult) -> None:
        """Write one target's per-item predictions (every rotation) and its score in one transaction; the job is done."""
        score = result.score

        def row(p: ItemPrediction) -> tuple:
            return (
                state.state_id,
                p.target_task,
                p.target_language,
                p.item_id,
                p.gold,
                p.predicted,
                json.dumps(p.logprobs),
                p.predicted_norm,
            )

        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO predictions (state_id, target_task, target_language, item_id, gold, predicted, logprobs, predicted_norm) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [row(p) for p in result.predictions],
            )
            db.executemany(
                "INSERT OR REPLACE INTO rotated_predictions (state_id, target_task, target_language, item_id, gold, predicted, logprobs, "
                "predicted_norm, rotation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row(p), p.rotation) for p in result.rotations],
            )
            db.execute(
                "INSERT OR REPLACE INTO scores (state_id, model, seed, source_task, source_language, target_task, target_language, n, "
                "accuracy, accuracy_norm, predicted_counts, gold_counts, dtype) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    state.state_id,
                    state.model,
                    state.seed,
                    state.source_task,
                    state.source_language,
                    score.target_task,
                    score.target_language,
                    score.n,
                    score.accuracy,
                    score.accuracy_norm,
                    json.dumps(score.predicted_counts),
                    json.dumps(score.gold_counts),
                    score.dtype or None,
                ),
            )
            job_id = eval_job_id(state, Cell(score.target_task, score.target_language))
            db.execute("DELETE FROM failures WHERE job_id = ?", (job_id,))
            db.execute(FINISHED, (job_id,))

    def computed_dtypes(self, model: str) -> set[str]:
        """The dtypes ``model``'s stored adapters were trained in and its stored scores computed in (where recorded)."""
        scored = {row[0] for row in self._db.execute("SELECT DISTINCT dtype FROM scores WHERE model = ? AND dtype IS NOT NULL", (model,))}
        trained = set(self.adapter_dtypes().query("model == @model")["dtype"])
        return scored | trained

    def adapter_dtypes(self) -> pd.DataFrame:
        """One row per stored adapter whose dtype was recorded: its model and the dtype it was trained in."""
        rows = [(model, json.loads(versions).get("dtype")) for model, versions in self._db.execute("SELECT model, versions FROM adapters")]
        return pd.DataFrame([row for row in rows if row[1]], columns=["model", "dtype"])

    def scored_targets(self, state_id: str) -> set[tuple[str, str]]:
        rows = self._db.execute("SELECT target_task, target_language FROM scores WHERE state_id = ?", (state_id,))
        return {(task, language) for task, language in rows}

    def scores(self) -> pd.DataFrame:
        """One row per (model state, target): the published scores, and the option counts as lists."""
        frame = pd.read_sql_query("SELECT * FROM scores ORDER BY state_id, target_task, target_language", self._db)
        for column in ("predicted_counts", "gold_counts"):
            frame[column] = [json.loads(v) if v else [] for v in frame[column]]
        return frame

    def item_predictions(self) -> pd.DataFrame:
        """One row per (model state, target, item, rotation): who the state is, and what it answered.

        Base-model rows have null source and seed. ``logprobs`` is a list per row, in the
        item's own option order; ``rotation`` is 0 for the published pass and r > 0 for the
        options rotated by r (permutation evaluation). Every metric and paired statistic is
        computed from this table.
        """
        frames = []
        for table, rotation in (("predictions", "0"), ("rotated_predictions", "p.rotation")):
            frames.append(
                pd.read_sql_query(
                    "SELECT s.model, s.seed, s.source_task, s.source_language, p.target_task, p.target_language, "
                    f"p.item_id, {rotation} AS rotation, p.gold, p.predicted, p.predicted_norm, p.logprobs "
                    f"FROM {table} p JOIN scores s ON s.state_id = p.state_id "
                    "AND s.target_task = p.target_task AND s.target_language = p.target_language",
                    self._db,
                )
            )
        frame = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
        frame["logprobs"] = [json.loads(v) for v in frame["logprobs"]]
        keys = ["model", "source_task", "source_language", "seed", "target_task", "target_language", "item_id", "rotation"]
        return frame.sort_values(keys, na_position="first", kind="stable", ignore_index=True)

    def counts(self) -> dict[str, int]:
        return {
            table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("adapters", "predictions", "scores", "failures")
        }
