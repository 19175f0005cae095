"""Write and query the acceptance_metrics table of one DuckDB file.

DuckDB lets one process write a file at a time; a second process gets a lock error. Every operation opens
a short-lived connection and retries on lock errors with backoff, so concurrent writers wait instead of
failing, and a measurement is replaced in one transaction (delete its key, insert its rows): re-writing
it never duplicates rows and a crash never leaves half of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from dspark_core.errors import DsparkError
from dspark_core.store.schema import ACCEPTANCE_COLUMNS, migrate

if TYPE_CHECKING:  # imported lazily at run time (see _duckdb)
    import duckdb

logger = logging.getLogger(__name__)


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
    schedule: str = "fixed"  # how many drafts each round verified: fixed, threshold, scheduled
    concurrency: int = 1  # requests decoded at once


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
    def connect(self, *, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:
        duckdb = _duckdb()
        if read_only and not self.path.exists():
            raise DsparkError(f"no metrics database at {self.path} yet; materialize speculative_eval (or `make run`) first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline, delay = time.monotonic() + self.lock_timeout_s, 0.05
        while True:
            try:
                # Readers get no file system (COPY TO, EXPORT, read_csv('/etc/...'), ATTACH, INSTALL) and cannot
                # change that setting: a query can only read this database.
                config = {"enable_external_access": False, "lock_configuration": True} if read_only else {}
                connection = duckdb.connect(str(self.path), read_only=read_only, config=config)
                break
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise DsparkError(f"{self.path} could not be opened as a DuckDB metrics database ({exc}); "
                                      f"point --db at the file dspark writes ($DSPARK_HOME/metrics.duckdb)") from None
                if time.monotonic() > deadline:
                    raise DsparkError(f"the metrics database {self.path} stayed locked by another process for "
                                      f"{self.lock_timeout_s:.0f} s ({exc}); wait for that process (a Dagster run, "
                                      f"another dspark command) to finish, then retry") from None
                if delay == 0.05:
                    logger.warning("the metrics database %s is locked by another process; waiting up to %.0f s",
                                   self.path, self.lock_timeout_s)
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
        return self._replace([key], rows)

    def _replace(self, keys: list[str], rows: list[AcceptanceRow]) -> int:
        """Delete the measurements `keys` and insert `rows`, in one transaction."""
        return self.replace_rows("acceptance_metrics", "measurement_key", keys, COLUMNS, [astuple(r) for r in rows])

    def replace_rows(self, table: str, key_column: str, keys: list[str], columns: list[str], rows: list[tuple]) -> int:
        """In one transaction: delete the rows of `table` whose `key_column` is in `keys`, insert `rows` (tuples
        in `columns` order). Retries on a write-write conflict; returns how many rows were written."""
        insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                with self.connect() as connection:
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        for key in keys:
                            connection.execute(f"DELETE FROM {table} WHERE {key_column} = ?", [key])
                        if rows:
                            connection.executemany(insert, rows)
                        connection.execute("COMMIT")
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                return len(rows)
            except _duckdb().TransactionException:  # a write-write conflict inside one process
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.1)

    # -- the questions the UI and `make run` ask (views defined in schema.py) ---------------------------
    def latest_tau(self, base_model: str | None = None, temperature: float | None = None) -> tuple[list[str], list[tuple]]:
        """The latest τ, speed-up and cost per (base model, drafter, benchmark, temperature), best τ first."""
        where, params = _filters(base_model=base_model, temperature=temperature)
        return self.query(
            "SELECT base_model, drafter, benchmark, temperature, draft_version, tau, speedup, tokens_per_s, "
            "draft_ms_per_round, verify_ms_per_round, rounds, recorded_at FROM latest_tau" + where
            + " ORDER BY base_model, tau DESC", params)

    def latest_registered_tau(self, base_model: str, benchmarks: tuple[str, ...], temperature: float = 0.0
                              ) -> tuple[list[str], list[tuple]]:
        """The platform's own latest evaluation of each drafter of `base_model` on `benchmarks`: rows of registered
        draft versions only (not command-line evaluations, nor transfer tests of other models' drafts), best τ
        first, with the conditional acceptance by position of the same measurement."""
        marks = ", ".join("?" for _ in benchmarks)
        return self.query(
            f"""WITH overall AS (
                SELECT * FROM acceptance_metrics WHERE base_model = ? AND temperature = ? AND benchmark IN ({marks})
                AND domain = 'all' AND context_bucket = 'all'
                AND draft_version IS NOT NULL AND draft_version NOT LIKE 'trained-on:%'
            ), latest AS (
                SELECT drafter, max(recorded_at) AS recorded_at FROM overall WHERE metric = 'tau' GROUP BY drafter
            )
            SELECT o.drafter, any_value(o.draft_version) AS draft_version,
                   max(o.value) FILTER (WHERE o.metric = 'tau') AS tau,
                   max(o.value) FILTER (WHERE o.metric = 'speedup') AS speedup,
                   max(o.value) FILTER (WHERE o.metric = 'tokens_per_s') AS tokens_per_s,
                   max(o.value) FILTER (WHERE o.metric = 'draft_ms_per_round') AS draft_ms_per_round,
                   max(o.value) FILTER (WHERE o.metric = 'verify_ms_per_round') AS verify_ms_per_round,
                   string_agg(printf('%.2f', o.value), ' ' ORDER BY o.position)
                       FILTER (WHERE o.metric = 'cond_accept') AS cond_accept,
                   o.recorded_at
            FROM overall o JOIN latest l USING (drafter, recorded_at) GROUP BY o.drafter, o.recorded_at
            ORDER BY tau DESC""", [base_model, temperature, *benchmarks])

    def tau_over_time(self, limit: int = 50) -> tuple[list[str], list[tuple]]:
        """τ per day, base model, drafter and domain, newest first."""
        return self.query(
            "SELECT strftime(day, '%Y-%m-%d') AS day, base_model, drafter, benchmark, domain, tau, rounds "
            "FROM tau_over_time ORDER BY day DESC, base_model, drafter, domain LIMIT ?", [limit])

    def tau_by_training(self, temperature: float | None = 0.0) -> tuple[list[str], list[tuple]]:
        """τ and speed-up of each evaluated draft against the steps and tokens its line had trained, oldest
        line first."""
        where, params = _filters(temperature=temperature)
        return self.query(
            "SELECT base_model, drafter, draft_version, benchmark, CAST(cumulative_steps AS BIGINT) AS cumulative_steps, "
            "CAST(cumulative_tokens AS BIGINT) AS cumulative_tokens, round(tau, 4) AS tau, round(speedup, 3) AS speedup "
            "FROM tau_by_training" + where + " ORDER BY base_model, drafter, benchmark, cumulative_steps", params)

    def acceptance_curves(self, base_model: str | None = None, metric: str = "cond_accept",
                          temperature: float | None = 0.0) -> dict[tuple[str, str, str], dict[int, float]]:
        """Latest per-position acceptance: {(base model, drafter, benchmark): {position k: rate}}."""
        where, params = _filters(base_model=base_model, temperature=temperature, metric=metric)
        _, rows = self.query("SELECT base_model, drafter, benchmark, position, value FROM acceptance_curves" + where
                             + " ORDER BY base_model, drafter, benchmark, position", params)
        curves: dict[tuple[str, str, str], dict[int, float]] = {}
        for base, drafter, benchmark, position, value in rows:
            curves.setdefault((base, drafter, benchmark), {})[int(position)] = value
        return curves

    def totals(self) -> tuple[int, int]:
        """(rows, measurements) in acceptance_metrics."""
        _, rows = self.query("SELECT count(*), count(DISTINCT measurement_key) FROM acceptance_metrics")
        return int(rows[0][0]), int(rows[0][1])

    def record(self, rows: list[AcceptanceRow]) -> int:
        """Write the measurements of `rows` (grouped by measurement_key) in one transaction, each replacing an
        earlier write of itself."""
        if not rows:
            return 0
        return self._replace(list(dict.fromkeys(row.measurement_key for row in rows)), rows)

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """Run a read-only query; returns (column names, rows). Statements that write, touch files or change the
        configuration are refused by DuckDB."""
        if not sql.strip():
            raise DsparkError("the SQL query is empty; give one, e.g. \"SELECT * FROM latest_tau\"")
        with self.connect(read_only=True) as connection:
            try:
                cursor = connection.execute(sql, params or [])
            except _duckdb().Error as exc:
                if "read-only" in str(exc) or isinstance(exc, _duckdb().PermissionException) or "configuration" in str(exc):
                    raise DsparkError(f"the metrics database is opened read-only, without file access: only queries "
                                      f"that read its tables and views are run ({exc})") from exc
                raise DsparkError(f"query failed: {exc}") from exc
            columns = [d[0] for d in cursor.description] if cursor.description else []
            return columns, cursor.fetchall()


def _duckdb():
    """duckdb, imported when the store is used: the rest of the library runs where it is not installed."""
    import duckdb

    return duckdb


def _filters(**equal) -> tuple[str, list]:
    """A WHERE clause testing each given (non-None) column for equality, and its parameters."""
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{column} = ?" for column in given), list(given.values())


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
