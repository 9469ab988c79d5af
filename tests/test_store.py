import sqlite3

import pytest

from donors.grid import Cell
from donors.records import AdapterRecord, ItemPrediction, ModelState
from donors.evaluate.native import summarize
from donors.store import ResultsStore
from donors.store.lock import study_lock


def predictions(task="t", lang="en", n=4, right=3):
    return [ItemPrediction(task, lang, f"i{k}", gold=0, predicted=0 if k < right else 1, logprobs=(-0.1, -2.0)) for k in range(n)]


def test_target_result_is_written_once_and_read_back(tmp_path):
    state = ModelState("m", Cell("t", "en"), 17)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        preds = predictions()
        store.add_target_result(state, summarize(preds), preds)
        store.add_target_result(state, summarize(preds), preds)  # a retry overwrites, never duplicates
        assert store.counts()["predictions"] == 4 and store.counts()["scores"] == 1
        assert store.scored_targets(state.state_id) == {("t", "en")}
        row = store.scores().iloc[0]
        assert row["accuracy"] == 0.75 and row["seed"] == 17 and row["source_task"] == "t"


def test_adapter_record_round_trip_clears_failure(tmp_path):
    record = AdapterRecord("m|t/en|seed17", "m", "t", "en", 17, "adapters/x", "abc", ("a", "b"), ("c",), 2, (1.2, 1.1), 3.0, {"torch": "x"})
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.record_failure(record.adapter_id, "train", "boom")
        store.record_failure(record.adapter_id, "train", "boom again")
        assert store.failures().iloc[0]["attempts"] == 2
        store.add_adapter(record)
        assert store.adapter(record.adapter_id) == record
        assert store.failures().empty


def test_a_failed_transaction_leaves_nothing(tmp_path):
    state = ModelState("m")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        preds = predictions()
        bad = preds + [ItemPrediction("t", "en", "i0", 0, 0, (float("nan"),))]  # same key twice is fine; break the score insert instead
        with pytest.raises(sqlite3.Error):
            with store._transaction() as db:
                db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", [(state.state_id, p.target_task, p.target_language, p.item_id, p.gold, p.predicted, "[]") for p in bad])
        assert store.counts()["predictions"] == 0


def test_second_process_gets_a_clear_lock_error(tmp_path):
    import subprocess
    import sys

    probe = "import sys\nfrom donors.store.lock import study_lock\nwith study_lock(sys.argv[1]): pass"
    with study_lock(tmp_path):
        second = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert second.returncode != 0
    assert "in use by another donors process" in second.stderr and str(tmp_path) in second.stderr
    with study_lock(tmp_path):  # released: the next run takes it
        pass
