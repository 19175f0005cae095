"""The decoding_benchmarks table (schema migration 3): what `benchmarks/bench_decoding.py` measured, one row per
(method, metric), keyed by the benchmark run's `run_id`: recording a run again replaces its rows in one
transaction (never duplicates), and other runs' rows are left alone.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from datetime import datetime

from dspark_core.errors import DsparkError
from dspark_core.store.acceptance import MetricsStore
from dspark_core.store.schema import DECODING_BENCHMARK_COLUMNS

TABLE = "decoding_benchmarks"


@dataclass(frozen=True)
class DecodingBenchmarkRow:
    """One row of decoding_benchmarks: build one per run, then `dataclasses.replace` per (method, metric)."""

    recorded_at: datetime
    run_id: str
    machine: str | None
    code_version: str | None
    git_commit: str | None
    target: str
    revision: str | None
    device: str
    dtype: str | None
    suite: str | None
    method: str
    prompts: int
    max_new_tokens: int
    metric: str
    value: float | None = None
    n: int | None = None


COLUMNS = [f.name for f in fields(DecodingBenchmarkRow)]
assert COLUMNS == [name for name, _ in DECODING_BENCHMARK_COLUMNS]


def record_decoding_benchmark(store: MetricsStore, run_id: str, rows: list[DecodingBenchmarkRow]) -> int:
    """Replace every row of benchmark run `run_id` by `rows`, atomically; returns how many were written."""
    if any(row.run_id != run_id for row in rows):
        raise DsparkError("every row of a decoding benchmark run must carry its run_id")
    return store.replace_rows(TABLE, "run_id", [run_id], COLUMNS, [astuple(row) for row in rows])


def decoding_benchmark_rows(store: MetricsStore, run_id: str | None = None) -> tuple[list[str], list[tuple]]:
    """The table's rows (of one run, or all), oldest run first; (column names, rows). Read-only."""
    where, params = (" WHERE run_id = ?", [run_id]) if run_id else ("", [])
    store.ensure_schema()  # a database from before migration 3 gets the (empty) table
    with store.connect(read_only=True) as connection:
        cursor = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} "
                                    f"ORDER BY recorded_at, run_id, method, metric", params)
        return [d[0] for d in cursor.description], cursor.fetchall()
