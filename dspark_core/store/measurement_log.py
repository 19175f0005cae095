"""Metrics as a log of immutable Parquet files: the store for many writers on many machines.

One DuckDB file takes one writing process at a time, and its lock means nothing across machines on a shared disk.
A measurement log is a directory (on a shared file system, e.g. next to the MLflow artifact root) where every write
is one new Parquet file, written under a hidden temporary name and renamed into place. Writers never wait for each
other and never touch each other's files; a reader sees a write whole or not at all.

Writing a measurement again (same `measurement_key`; for decoding benchmarks, the same `run_id`) adds a newer file;
readers keep, per key, the rows of the newest file holding it, so a re-write replaces rather than duplicates (a
measurement can be replaced, not retracted). "Newest" is the file name's leading write time: writers on machines
whose clocks disagree by more than the time between two writes of one key may see the older one win.

A reader loads the log into an in-memory DuckDB database with the same tables and views as the DuckDB file, then
turns off file access, so `dspark sql` and the UI's queries run unchanged, read-only.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from dspark_core.errors import DsparkError
from dspark_core.store.acceptance import MetricsStore, _duckdb
from dspark_core.store.schema import TABLES, VIEWS

if TYPE_CHECKING:  # imported lazily at run time (see _duckdb)
    import duckdb

#: statements a reader may run (DESCRIBE and SHOW parse as SELECT)
_READ_STATEMENTS = ("SELECT", "EXPLAIN")


def _writer_id() -> str:
    """host-pid, safe in a file name: tells apart writers that start in the same nanosecond."""
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', socket.gethostname())[:40]}-{os.getpid()}"


def _create_table(connection, table: str) -> None:
    columns, _ = TABLES[table]
    connection.execute(f"CREATE TABLE {table} ({', '.join(f'{name} {kind}' for name, kind in columns)})")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: a hidden temporary older than this was left by a writer killed between writing and renaming it
ABANDONED_AFTER_S = 24 * 3600


def _sweep_abandoned(directory: Path) -> None:
    """Remove the temporaries of writers killed mid-write (readers never see them; they only take space)."""
    cutoff = time.time() - ABANDONED_AFTER_S
    for leftover in directory.glob(".*.parquet.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass  # another writer removed it first


def _unreadable(connection, files: list[str]) -> str | None:
    """The first of `files` DuckDB cannot read as Parquet, to name it in the error."""
    for file in files:
        try:
            connection.execute("SELECT * FROM read_parquet(?) LIMIT 0", [file])
        except Exception:
            return file
    return None


class MeasurementLog(MetricsStore):
    """The metrics store as a directory of Parquet files, one per write (see the module docstring)."""

    def __init__(self, path: str | Path):
        super().__init__(path)

    def _table_dir(self, table: str) -> Path:
        directory = self.path / table
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DsparkError(f"the measurement log {self.path} cannot be written ({exc.strerror}); point "
                              f"DSPARK_METRICS (or --db, or the metrics_db resource's path) at a directory this "
                              f"process may write") from None
        return directory

    def ensure_schema(self) -> None:
        for table in TABLES:
            self._table_dir(table)

    def replace_rows(self, table: str, key_column: str, keys: list[str], columns: list[str], rows: list[tuple]) -> int:
        """Add one Parquet file holding `rows`; readers then take them in place of any earlier rows of their keys."""
        declared, key = TABLES[table]
        if key_column != key:
            raise DsparkError(f"{table} is replaced by {key}, not {key_column}")
        if not rows:
            return 0
        directory = self._table_dir(table)
        name = f"{time.time_ns():020d}-{_writer_id()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp, final = directory / f".{name}.tmp", directory / name
        duckdb = _duckdb()
        connection = duckdb.connect()  # in memory: types the rows as the table declares them, writes the file
        try:
            _create_table(connection, table)
            connection.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                   f"({', '.join('?' for _ in columns)})", rows)
            quoted = str(tmp).replace("'", "''")
            connection.execute(f"COPY {table} TO '{quoted}' (FORMAT parquet, COMPRESSION zstd)")
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            _fsync_directory(directory)
        except OSError as exc:
            raise DsparkError(f"could not add {final.name} to the measurement log {self.path} ({exc.strerror}); "
                              f"free space or point DSPARK_METRICS at a writable directory, then rerun") from None
        except duckdb.IOException as exc:
            raise DsparkError(f"could not add {final.name} to the measurement log {self.path} ({exc}); free space "
                              f"or point DSPARK_METRICS at a writable directory, then rerun") from None
        finally:
            connection.close()
            tmp.unlink(missing_ok=True)
        _sweep_abandoned(directory)
        return len(rows)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:
        if not read_only:
            raise DsparkError("a measurement log is written one file per write (record, replace_rows), "
                              "not through a connection")
        if not self.path.is_dir():
            raise DsparkError(f"no measurement log at {self.path} yet; materialize speculative_eval (or `make run`) "
                              f"with DSPARK_METRICS={self.path} first")
        duckdb = _duckdb()
        connection = duckdb.connect()
        try:
            for table, (_, key) in TABLES.items():
                _create_table(connection, table)
                files = sorted(str(f) for f in (self.path / table).glob("*.parquet"))  # temp files are hidden
                if not files:
                    continue
                try:
                    connection.execute(
                        f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (filename) FROM "
                        f"read_parquet(?, union_by_name = true, filename = true) "
                        f"QUALIFY filename = max(filename) OVER (PARTITION BY {key})", [files])
                except duckdb.Error as exc:
                    bad = _unreadable(connection, files) or "one of its files"
                    reason = str(exc).splitlines()[0]
                    raise DsparkError(f"the measurement log {self.path / table} holds a file DuckDB cannot read as "
                                      f"{table}: {bad} ({reason}); move that file out of the directory, then "
                                      f"retry") from None
            for view in VIEWS:
                connection.execute(view)
            # from here on the connection reads its own tables only: no file system, and that cannot be undone
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
            yield connection
        finally:
            connection.close()

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """As `MetricsStore.query`. The tables live in memory, so statements that would change them are refused
        here rather than by a read-only file."""
        if sql.strip():
            try:
                with _duckdb().connect() as parser:
                    statements = parser.extract_statements(sql)
            except _duckdb().Error as exc:
                raise DsparkError(f"query failed: {exc}") from exc
            refused = [s.type.name for s in statements if s.type.name not in _READ_STATEMENTS]
            if refused:
                raise DsparkError(f"the measurement log is opened read-only, without file access: only queries "
                                  f"that read its tables and views are run (this one is {', '.join(refused)})")
        return super().query(sql, params)


def open_metrics_store(location: str | Path | None = None, *, lock_timeout_s: float = 120.0) -> MetricsStore:
    """The metrics store at `location`, else $DSPARK_METRICS, else $DSPARK_HOME/metrics.duckdb.

    A file, or a path ending in .duckdb/.db, is one DuckDB file (one machine; writers take turns); any other path
    is a measurement log directory (writers on many machines at once).
    """
    if location is None or str(location) == "":
        location = os.environ.get("DSPARK_METRICS") or None
    if location is None:
        from dspark_core.paths import dspark_home

        return MetricsStore(dspark_home() / "metrics.duckdb", lock_timeout_s=lock_timeout_s)
    path = Path(location).expanduser()
    if path.is_file() or path.suffix in {".duckdb", ".db", ".ddb"}:
        return MetricsStore(path, lock_timeout_s=lock_timeout_s)
    return MeasurementLog(path)
