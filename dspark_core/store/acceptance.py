"""Write and query the acceptance_metrics table of one DuckDB file.

DuckDB lets one process write a file at a time; a second process gets a lock error. Every operation opens
a short-lived connection and retries on lock errors with backoff, so concurrent writers wait instead of
failing, and a measurement is replaced in one transaction (delete its key, insert its rows): re-writing
it never duplicates rows and a crash never leaves half of it.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb

from dspark_core.errors import DsparkError
from dspark_core.store.schema import ACCEPTANCE_COLUMNS, migrate


@dataclass(frozen=True)
class AcceptanceRow:
    """One row of acceptance_metrics. The fields with defaults are the measured value; the others are
    shared by every row of one measurement (build one row, then `dataclasses.replace` per value)."""

    recorded_at: datetime
    measurement_key: str
    run_id: str | None
    mlflow_run_id: str | None
    base_model: str
    base_model_revision: str | None
    drafter: str
    draft_checkpoint: str | None
    draft_version: str | None
    benchmark: str
    temperature: float
    block_size: int
    code_version: str | None
    domain: str = "all"
    context_bucket: str = "all"
    metric: str = "tau"
    position: int | None = None
    value: float | None = None
    n: int | None = None


COLUMNS = [f.name for f in fields(AcceptanceRow)]
assert sorted(COLUMNS) == sorted(name for name, _ in ACCEPTANCE_COLUMNS)


def measurement_key(**identity) -> str:
    """A stable key for what was measured (model, draft, settings, day...): same identity, same key."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflict" in text


class MetricsStore:
    """The platform's metrics database (one DuckDB file)."""

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise DsparkError(f"no metrics database at {self.path} yet; materialize speculative_eval (or `make run`) first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline, delay = time.monotonic() + self.lock_timeout_s, 0.05
        while True:
            try:
                connection = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.Error as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            if not read_only:
                migrate(connection)
            yield connection
        finally:
            connection.close()

    def ensure_schema(self) -> None:
        with self.connect():
            pass

    def replace_measurement(self, key: str, rows: list[AcceptanceRow]) -> int:
        """Replace every row of measurement `key` by `rows`, atomically; returns how many were written."""
        if any(row.measurement_key != key for row in rows):
            raise DsparkError("every row of a measurement must carry its measurement_key")
        insert = f"INSERT INTO acceptance_metrics ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                with self.connect() as connection:
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        connection.execute("DELETE FROM acceptance_metrics WHERE measurement_key = ?", [key])
                        if rows:
                            connection.executemany(insert, [astuple(row) for row in rows])
                        connection.execute("COMMIT")
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                return len(rows)
            except duckdb.TransactionException:  # a write-write conflict inside one process
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.1)

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """Run a read-only query; returns (column names, rows). Statements that write are refused by DuckDB."""
        with self.connect(read_only=True) as connection:
            try:
                cursor = connection.execute(sql, params or [])
            except duckdb.Error as exc:
                if "read-only" in str(exc):
                    raise DsparkError(f"the metrics database is opened read-only here; only queries that read are run ({exc})") from exc
                raise DsparkError(f"query failed: {exc}") from exc
            columns = [d[0] for d in cursor.description] if cursor.description else []
            return columns, cursor.fetchall()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
