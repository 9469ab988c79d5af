import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from donors.evaluate import target_result
from donors.grid import Cell
from donors.jobs import EvalJob
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


def test_a_job_that_comes_back_leaves_the_in_flight_list_with_its_record(tmp_path):
    """A job stops counting as running in the same transaction that stores its adapter, its score or its failure."""
    record = AdapterRecord("m|t/en|seed1", "m", "t", "en", 1, "adapters/x", "abc", ("a",), (), None, (), None, {})
    state = ModelState("m", Cell("t", "en"), 1)
    scored, failed = EvalJob(state, Cell("t", "en")).job_id, EvalJob(state, Cell("t", "de")).job_id
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.mark_running([record.adapter_id], "train")
        store.mark_running([scored, failed, "eval:still-out"], "eval")
        store.add_adapter(record)
        assert store.running() == {scored, failed, "eval:still-out"}
        store.add_target_result(state, target_result(predictions("t", "en")))
        store.record_failure(failed, "eval", "boom")
        assert store.running() == {"eval:still-out"}


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
        "INSERT INTO scores VALUES ('m|base', 'm', NULL, NULL, NULL, 't', 'en', 4, 0.5, 0.5);"
        "INSERT INTO predictions VALUES ('m|base', 't', 'en', 'a', 0, 2, '[-3, -2, -1]'), ('m|base', 't', 'en', 'b', 1, 2, '[-3, -2, -1]'),"
        "('m|base', 't', 'en', 'c', 2, 2, '[-3, -2, -1]'), ('m|base', 't', 'en', 'd', 1, 0, '[-1, -2, -3, -4, -5]');"
    )
    db.commit()
    db.close()
    with ResultsStore(path) as store:
        row = store.scores().iloc[0]
        # As wide as the widest item, as a fresh store counts them (summarize), whichever row comes first.
        assert row["predicted_counts"] == [1, 0, 3, 0, 0] and row["gold_counts"] == [1, 2, 1, 0, 0]
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


def test_an_emptied_store_of_a_study_that_ran_is_refused_not_started_over(tmp_path):
    from donors.store.sqlite import StoreUnreadable

    path = tmp_path / "results.sqlite"
    path.touch()
    ResultsStore(path).close()  # an empty file alone is a store not yet written: it is created
    path.write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(StoreUnreadable, match=r"results.sqlite is empty \(0 bytes\).*\(config.json\).*delete the empty file"):
        ResultsStore(path)
    assert path.stat().st_size == 0


CHATTR = shutil.which("chattr")


@pytest.mark.skipif(CHATTR is None or os.geteuid() != 0, reason="making a folder immutable needs chattr and root")
def test_a_store_made_read_only_mid_run_stops_with_a_message_not_a_crash(tmp_path):
    """Immutable folder and files after the first writes: SQLite's WAL index (a memory map) died of SIGBUS here."""
    script = (
        "import subprocess, sys\n"
        "from donors.store import ResultsStore\n"
        "from donors.store.sqlite import StoreUnreadable\n"
        f"store = ResultsStore({str(tmp_path / 'study' / 'results.sqlite')!r})\n"
        "store.set_meta('a', '1')\n"
        f"subprocess.run([{CHATTR!r}, '-R', '+i', {str(tmp_path / 'study')!r}], check=True)\n"
        "try:\n"
        "    for i in range(200):\n"
        "        store.set_meta(f'k{i}', 'x' * 1000)\n"
        "except StoreUnreadable as error:\n"
        "    print(error)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run([CHATTR, "-R", "-i", str(tmp_path / "study")], check=False)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "cannot write the results store" in done.stdout and "writable (and not immutable)" in done.stdout


@pytest.mark.skipif(CHATTR is None or os.geteuid() != 0, reason="making a folder immutable needs chattr and root")
def test_a_read_only_store_of_an_older_version_is_still_read(tmp_path):
    """A finished study archived read-only before scores recorded their dtype: analysing it needs no write."""
    study = tmp_path / "study"
    state = ModelState("m", Cell("t", "en"), 17)
    with ResultsStore(study / "results.sqlite") as store:
        store.add_target_result(state, target_result(predictions()))
    with sqlite3.connect(study / "results.sqlite") as db:
        db.execute("ALTER TABLE scores DROP COLUMN dtype")  # as the previous version wrote it
    subprocess.run([CHATTR, "-R", "+i", str(study)], check=True)
    try:
        with ResultsStore(study / "results.sqlite") as store:
            scores = store.scores()
        assert len(scores) == 1 and "dtype" not in scores
    finally:
        subprocess.run([CHATTR, "-R", "-i", str(study)], check=False)
    with ResultsStore(study / "results.sqlite") as store:  # writable again: upgraded on opening
        assert "dtype" in store.scores()


def test_a_reader_holding_the_store_makes_a_write_wait_and_then_says_so(tmp_path, monkeypatch):
    from donors.store import sqlite as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)
    store = ResultsStore(tmp_path / "results.sqlite")
    store.set_meta("a", "1")
    reader = sqlite3.connect(tmp_path / "results.sqlite")
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM study").fetchall()  # a long analysis read, in the middle
    with pytest.raises(store_module.StoreUnreadable, match=r"stayed locked by another process .*Nothing stored is lost"):
        store.set_meta("b", "2")
    reader.rollback()
    store.set_meta("b", "2")  # once the reader is done, the write goes through
    assert store.get_meta("b") == "2"
    # An error that is neither a lock nor an unwritable store is a bug, and stays one.
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with store._transaction() as db:
            db.execute("INSERT INTO no_such_table VALUES (1)")
