import sqlite3

import pytest

from donors.evaluate import target_result
from donors.grid import Cell
from donors.records import AdapterRecord, ItemPrediction, ModelState
from donors.store import ResultsStore
from donors.store.lock import study_lock


def predictions(task="t", lang="en", n=4, right=3):
    return [ItemPrediction(task, lang, f"i{k}", gold=0, predicted=0 if k < right else 1, logprobs=(-0.1, -2.0)) for k in range(n)]


def test_target_result_is_written_once_and_read_back(tmp_path):
    state = ModelState("m", Cell("t", "en"), 17)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        preds = predictions()
        store.add_target_result(state, target_result(preds))
        store.add_target_result(state, target_result(preds))  # a retry overwrites, never duplicates
        assert store.counts()["predictions"] == 4 and store.counts()["scores"] == 1
        assert store.scored_targets(state.state_id) == {("t", "en")}
        row = store.scores().iloc[0]
        assert row["accuracy"] == 0.75 and row["seed"] == 17 and row["source_task"] == "t"
        assert row["predicted_counts"] == [3, 1] and row["gold_counts"] == [4, 0]


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
                db.executemany(
                    "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(state.state_id, p.target_task, p.target_language, p.item_id, p.gold, p.predicted, "[]", None) for p in bad],
                )
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


def test_an_older_store_gains_the_new_columns_and_its_option_counts(tmp_path):
    path = tmp_path / "r.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE predictions (state_id TEXT, target_task TEXT, target_language TEXT, item_id TEXT, gold INTEGER, "
        "predicted INTEGER, logprobs TEXT, PRIMARY KEY (state_id, target_task, target_language, item_id));"
        "CREATE TABLE scores (state_id TEXT, model TEXT, seed INTEGER, source_task TEXT, source_language TEXT, target_task TEXT, "
        "target_language TEXT, n INTEGER, accuracy REAL, accuracy_norm REAL, PRIMARY KEY (state_id, target_task, target_language));"
        "INSERT INTO scores VALUES ('m|base', 'm', NULL, NULL, NULL, 't', 'en', 3, 0.33, 0.33);"
        "INSERT INTO predictions VALUES ('m|base', 't', 'en', 'a', 0, 2, '[-3, -2, -1]'), ('m|base', 't', 'en', 'b', 1, 2, '[-3, -2, -1]'),"
        "('m|base', 't', 'en', 'c', 2, 2, '[-3, -2, -1]');"
    )
    db.commit()
    db.close()
    with ResultsStore(path) as store:
        row = store.scores().iloc[0]
        assert row["predicted_counts"] == [0, 0, 3] and row["gold_counts"] == [1, 1, 1]
        predictions = store.item_predictions()
        assert predictions["predicted_norm"].isna().all() and predictions["logprobs"].iloc[0] == [-3, -2, -1]


def test_a_garbage_store_is_named_with_what_to_do_and_left_untouched(tmp_path):
    from donors.errors import DonorsError

    path = tmp_path / "results.sqlite"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(DonorsError, match=r"results.sqlite: cannot be used as this study's results store .*restore it from a backup"):
        ResultsStore(path)
    assert path.read_bytes() == garbage
