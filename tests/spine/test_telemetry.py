import sqlite3
import time

import pytest

from agent.errors import InvalidParams
from agent.telemetry import Telemetry, parse_duration


def test_rows_are_batched_into_sqlite_in_wal_mode(tmp_path):
    t = Telemetry(tmp_path / "t.db", flush_s=60)
    for i in range(10):
        t.record("requests", {"model": "m", "latency_ms": float(i), "ok": True})
    t.record("swaps", {"from": "a", "to": "b", "reason": {"why": "test"}})
    t.close()
    db = sqlite3.connect(tmp_path / "t.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 10
    assert db.execute("SELECT reason FROM swaps").fetchone()[0] == '{"why": "test"}'


def test_retention_prunes_old_rows(tmp_path):
    t = Telemetry(tmp_path / "t.db", retention_s=3600)
    t.record("requests", {"model": "old", "ts": time.time() - 7200})
    t.record("requests", {"model": "new"})
    t.close()
    rows = sqlite3.connect(tmp_path / "t.db").execute("SELECT model FROM requests").fetchall()
    assert rows == [("new",)]


def test_history_filters_by_time_and_rejects_unknown_tables(tmp_path):
    t = Telemetry(tmp_path / "t.db")
    t.record("requests", {"model": "a", "ts": time.time() - 100})
    t.record("requests", {"model": "b"})
    assert [r["model"] for r in t.history(50, ["requests"])["requests"]] == ["b"]
    with pytest.raises(InvalidParams):
        t.history(50, ["passwords"])
    t.close()


@pytest.mark.parametrize("text,secs", [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("45", 45)])
def test_durations(text, secs):
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "ten", "-5m", "5 minutes", "1w"])
def test_bad_durations(text):
    with pytest.raises(InvalidParams):
        parse_duration(text)


def test_history_sees_a_row_the_writer_thread_has_taken_but_not_yet_committed(tmp_path):
    # read-your-writes: a row recorded before history() is in its answer, even while the background
    # writer holds it in an open transaction (here: stuck behind another connection's write lock)
    import threading

    t = Telemetry(tmp_path / "t.db", flush_s=0.05)
    t.record("swaps", {"to": "fp32", "reason": {"why": "startup"}})
    t.history(60)   # the columns exist now: the next insert waits for the lock instead of altering
    blocker = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        t.record("swaps", {"to": "remote", "reason": {"why": "failover"}})
        time.sleep(0.4)   # the writer has taken the row and waits for the lock
        got: list[dict] = []
        reader = threading.Thread(target=lambda: got.extend(t.history(60, ["swaps"])["swaps"]))
        reader.start()
        time.sleep(0.3)
        blocker.execute("COMMIT")
        reader.join(10)
        assert [r["to"] for r in got] == ["remote", "fp32"]
    finally:
        blocker.close()
        t.close()


def test_a_flush_that_fails_keeps_its_rows_for_the_next_one(tmp_path):
    t = Telemetry(tmp_path / "t.db", flush_s=60)
    blocker = sqlite3.connect(tmp_path / "t.db", isolation_level=None, timeout=10)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        t.record("swaps", {"to": "int8"})
        db = sqlite3.connect(tmp_path / "t.db", timeout=0.1)
        import sqlite_utils

        t._flush(sqlite_utils.Database(db))   # the lock is held: this flush fails
        blocker.execute("COMMIT")
        assert [r["to"] for r in t.history(60, ["swaps"])["swaps"]] == ["int8"]
    finally:
        blocker.close()
        t.close()


def test_rows_with_different_and_new_columns_keep_every_value_in_its_column(tmp_path):
    import numpy as np

    t = Telemetry(tmp_path / "t.db", flush_s=60)
    try:
        t.record("requests", {"model": "a", "latency_ms": 1.5, "ok": True})
        t.flush()
        # a later batch: a column the table lacks, a row without some columns, odd values
        t.record("requests", {"model": "b", "ok": False, "error": "Timeout", 'odd "name"': 3})
        t.record("requests", {"latency_ms": np.float32(2.25), "batch": np.int64(4), "ok": np.bool_(True),
                              "reason": {"why": ["x", 1]}, "model": "c"})
        t.record("requests", {"model": "d", "when": object.__new__(type("Stamp", (), {"__str__": lambda s: "S"}))})
        t.flush()
        rows = {r["model"]: r for r in t.history(60, ["requests"])["requests"]}
    finally:
        t.close()
    assert rows["a"]["latency_ms"] == 1.5 and rows["a"]["error"] is None
    assert rows["b"]["ok"] == 0 and rows["b"]["error"] == "Timeout" and rows["b"]['odd "name"'] == 3
    assert rows["b"]["latency_ms"] is None
    assert rows["c"]["latency_ms"] == 2.25 and rows["c"]["batch"] == 4 and rows["c"]["ok"] == 1
    assert rows["c"]["reason"] == '{"why": ["x", 1]}'
    assert rows["d"]["when"] == "S"
