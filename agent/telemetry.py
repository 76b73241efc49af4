"""The telemetry store: one SQLite file (WAL) in the state directory, written in batches.

Tables: ``requests`` (model, variant, device, latency, ok/error, joules), ``swaps`` (from, to, reason,
load/warm-up ms), ``decisions`` (policy output), ``samples`` (sensor snapshots, flattened),
``events`` (anything else). Rows are queued in memory and flushed by a background thread every
``flush_s`` seconds or ``batch`` rows; rows older than ``retention_s`` are deleted on flush.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.errors import InvalidParams

log = logging.getLogger(__name__)
TABLES = ("requests", "swaps", "decisions", "samples", "events")


class Telemetry:
    def __init__(self, path: Path, *, retention_s: float = 7 * 86400, flush_s: float = 1.0, batch: int = 500,
                 max_queued: int = 100_000) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self.flush_s = flush_s
        self.batch = batch
        self.max_queued = max_queued
        self._q: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self._n = 0
        self._lock = threading.Lock()          # guards the queue
        self._write = threading.Lock()         # one flush at a time: take + commit is one step
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_prune = 0.0
        # called with (table, row) for every recorded row, in the recording thread (e.g. Prometheus metrics)
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        db = self._open()
        for t in TABLES:
            tbl = db.table(t)
            if not tbl.exists():
                tbl.create({"ts": float}, if_not_exists=True)
                tbl.create_index(["ts"], if_not_exists=True)
        db.conn.close()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite_utils.Database:
        db = sqlite_utils.Database(sqlite3.connect(self.path, timeout=10.0, check_same_thread=False))
        db.enable_wal()
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def record(self, table: str, row: dict[str, Any]) -> None:
        if table not in self._q:
            raise ValueError(f"unknown telemetry table {table}")
        row = dict(row)
        row.setdefault("ts", time.time())
        for listener in self.listeners:
            listener(table, row)
        with self._lock:
            self._q[table].append(row)
            self._n += 1
            if self._n >= self.batch:
                self._wake.set()

    def _run(self) -> None:
        db = self._open()
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self._flush(db)
        self._flush(db)
        db.conn.close()

    def _flush(self, db: sqlite_utils.Database) -> None:
        # Holding the write lock from taking the rows until their commit is what makes history() see
        # every row recorded before it: its own flush waits for a background flush in progress.
        with self._write:
            with self._lock:
                q, self._q = self._q, {t: [] for t in TABLES}
                self._n = 0
            try:
                with db.conn:
                    for t, rows in q.items():
                        if rows:
                            _insert(db, t, rows)
                    now = time.time()
                    if now - self._last_prune > 60:
                        self._last_prune = now
                        for t in TABLES:
                            db.execute(f"DELETE FROM [{t}] WHERE ts < ?", [now - self.retention_s])
            except Exception as e:  # noqa: BLE001 - telemetry must never take serving down; keeps the rows it can
                kept = self._requeue(q)
                log.error("telemetry flush failed (%d rows kept for the next try): %s", kept, e)

    def _requeue(self, q: dict[str, list[dict[str, Any]]]) -> int:
        """Put rows that failed to commit back in front of the queue (up to ``max_queued`` in all)."""
        with self._lock:
            kept = 0
            for t, rows in q.items():
                merged = rows + self._q[t]
                if len(merged) > self.max_queued:
                    log.warning("telemetry dropped %d oldest %s rows (queue over %d)",
                                len(merged) - self.max_queued, t, self.max_queued)
                    merged = merged[-self.max_queued:]
                self._q[t] = merged
                kept += len(merged)
            self._n = kept
            return kept

    def flush(self) -> None:
        """Write everything queued now (blocking)."""
        db = self._open()
        try:
            self._flush(db)
        finally:
            db.conn.close()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def history(self, since_s: float, tables: list[str] | None = None,
                limit: int = 1000) -> dict[str, list[dict[str, Any]]]:
        self.flush()
        db = self._open()
        try:
            out: dict[str, list[dict[str, Any]]] = {}
            for t in tables or list(TABLES):
                if t not in TABLES:
                    raise InvalidParams(f"unknown history table {t!r}; expected one of {', '.join(TABLES)}")
                rows = db.execute(f"SELECT * FROM [{t}] WHERE ts >= ? ORDER BY ts DESC LIMIT ?",
                                  [time.time() - since_s, limit])
                cols = [c[0] for c in rows.description]
                out[t] = [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]
            return out
        finally:
            db.conn.close()


_PLAIN = (str, int, float, bytes)
_EXACT = frozenset((str, int, float, bool, bytes))   # types bound as they are (checked by type, not isinstance)


def _value(v: Any) -> Any:
    """A value as SQLite takes it: containers as JSON, numpy scalars as Python numbers, other objects as text."""
    if v is None or isinstance(v, _PLAIN):
        return v
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return v.item() if hasattr(v, "item") else str(v)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in row.items()}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _insert(db: sqlite_utils.Database, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows into ``table`` with one prepared statement (columns a row lacks are NULL); a column
    no row had before is added first, typed from its values (sqlite-utils). Several times cheaper per
    row than ``Table.insert_all``, which is the telemetry writer's whole cost under load."""
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    tbl = db.table(table)
    if not cols.keys() <= tbl.columns_dict.keys():
        tbl.add_missing_columns([_flat(r) for r in rows])
    names = list(cols)
    sql = (f"INSERT INTO {_quote(table)} ({', '.join(_quote(c) for c in names)}) "
           f"VALUES ({', '.join('?' * len(names))})")
    db.conn.executemany(sql, [tuple([v if v is None or type(v) in _EXACT else _value(v) for v in map(r.get, names)])
                              for r in rows])


_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str, *, positive: bool = False) -> float:
    """'90', '500ms', '30s', '10m', '1.5h', '2d' -> seconds. Anything else -> InvalidParams."""
    m = _DUR.match(str(text or ""))
    if not m:
        raise InvalidParams(f"expected a duration like 30s, 10m, 1h or 2d, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if positive and value <= 0:
        raise InvalidParams(f"expected a duration of more than zero, got {text!r}")
    return value
