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

from donors.records import AdapterRecord, ItemPrediction, ModelState, TargetScore

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
    created TEXT DEFAULT (datetime('now'))
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
    PRIMARY KEY (state_id, target_task, target_language, item_id)
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
    PRIMARY KEY (state_id, target_task, target_language)
);
"""


class StoreError(RuntimeError):
    pass


class ResultsStore:
    """Typed reads and atomic writes over the study's SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            yield self._db

    # -- study metadata -------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", (key, value))

    # -- adapters ------------------------------------------------------------------
    def add_adapter(self, record: AdapterRecord) -> None:
        row = asdict(record)
        for key in ("train_ids", "validation_ids", "validation_losses", "versions"):
            row[key] = json.dumps(row[key])
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO adapters ({columns}) VALUES ({marks})", tuple(row.values()))
            db.execute("DELETE FROM failures WHERE job_id = ?", (record.adapter_id,))

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

    # -- failures -------------------------------------------------------------------
    def record_failure(self, job_id: str, kind: str, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO failures (job_id, kind, error) VALUES (?, ?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET error = excluded.error, attempts = attempts + 1",
                (job_id, kind, error),
            )

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
    def add_target_result(self, state: ModelState, score: TargetScore, predictions: list[ItemPrediction]) -> None:
        """Write one target's per-item predictions and its score in one transaction."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (state.state_id, p.target_task, p.target_language, p.item_id, p.gold, p.predicted, json.dumps(p.logprobs))
                    for p in predictions
                ],
            )
            db.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    state.state_id, state.model, state.seed, state.source_task, state.source_language,
                    score.target_task, score.target_language, score.n, score.accuracy, score.accuracy_norm,
                ),
            )
            db.execute("DELETE FROM failures WHERE job_id = ?", (f"eval:{state.state_id}:{score.target_task}/{score.target_language}",))

    def scored_targets(self, state_id: str) -> set[tuple[str, str]]:
        rows = self._db.execute("SELECT target_task, target_language FROM scores WHERE state_id = ?", (state_id,))
        return {(t, l) for t, l in rows}

    def scores(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM scores ORDER BY state_id, target_task, target_language", self._db)

    def predictions(self) -> pd.DataFrame:
        frame = pd.read_sql_query(
            "SELECT state_id, target_task, target_language, item_id, gold, predicted FROM predictions "
            "ORDER BY state_id, target_task, target_language, item_id",
            self._db,
        )
        return frame

    def item_outcomes(self) -> pd.DataFrame:
        """One row per (model state, target, item): who the state is, and whether it was right.

        Base-model rows have null source and seed. Paired statistics (bootstrap, McNemar)
        join an adapted state's rows to the base rows of the same model, target and item.
        """
        return pd.read_sql_query(
            "SELECT s.model, s.seed, s.source_task, s.source_language, p.target_task, p.target_language, "
            "p.item_id, p.gold, p.predicted, (p.gold = p.predicted) AS correct "
            "FROM predictions p JOIN scores s ON s.state_id = p.state_id "
            "AND s.target_task = p.target_task AND s.target_language = p.target_language "
            "ORDER BY s.model, s.source_task, s.source_language, s.seed, p.target_task, p.target_language, p.item_id",
            self._db,
        )

    def counts(self) -> dict[str, int]:
        return {
            table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("adapters", "predictions", "scores", "failures")
        }
