"""The measurement log: metrics written by many processes (on many machines) as immutable Parquet files, read with
the same tables and views as the DuckDB file."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import run_cli

from dspark_core.errors import DsparkError
from dspark_core.store import (AcceptanceRow, DecodingBenchmarkRow, MeasurementLog, MetricsStore,
                               decoding_benchmark_rows, open_metrics_store, record_decoding_benchmark)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def _measurement(key: str, drafter: str, tau: float, *, at: datetime = T0, steps: int | None = None) -> list[AcceptanceRow]:
    shared = AcceptanceRow(at, key, "run", None, "smollm2", "rev", drafter, None, f"v-{key}", "heldout-v1", 0.0, 7,
                           "test")
    rows = [replace(shared, metric="tau", value=tau, n=100), replace(shared, metric="speedup", value=tau / 1.4, n=90)]
    rows += [replace(shared, metric="cond_accept", position=k, value=0.9 - 0.1 * k, n=100) for k in range(3)]
    rows += [replace(shared, domain="code", metric="tau", value=tau + 0.1, n=40)]
    if steps is not None:
        rows += [replace(shared, metric="cumulative_steps", value=steps, n=1),
                 replace(shared, metric="cumulative_tokens", value=steps * 512, n=1)]
    return rows


def _history() -> list[list[AcceptanceRow]]:
    return [_measurement("a1", "dspark", 1.30, steps=1200), _measurement("b1", "eagle3", 1.25),
            _measurement("a2", "dspark", 1.34, at=T0 + timedelta(days=1), steps=2400),
            _measurement("b2", "eagle3", 1.28, at=T0 + timedelta(days=1))]


def _write_many(location: str, worker: int, writes: int) -> None:
    store = open_metrics_store(location)
    for i in range(writes):
        store.record(_measurement(f"w{worker}-{i}", "dspark", 1.0 + worker / 10))


def test_eight_processes_writing_at_once_lose_no_row(tmp_path):
    log = tmp_path / "metrics-log"
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_write_many, args=(str(log), w, 6)) for w in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    rows_per = len(_measurement("x", "dspark", 1.0))
    assert MeasurementLog(log).totals() == (8 * 6 * rows_per, 8 * 6)
    assert not [f for f in (log / "acceptance_metrics").iterdir() if f.name.startswith(".")]  # no temporaries left


def test_a_rewrite_replaces_its_measurement_and_nothing_else(tmp_path):
    log = MeasurementLog(tmp_path / "log")
    log.record(_measurement("a", "dspark", 1.3) + _measurement("b", "eagle3", 1.2))
    log.record(_measurement("a", "dspark", 1.5)[:2])
    _, rows = log.query("SELECT measurement_key, count(*), max(value) FILTER (WHERE metric = 'tau' AND domain = 'all') "
                        "FROM acceptance_metrics GROUP BY 1 ORDER BY 1")
    assert rows == [("a", 2, 1.5), ("b", len(_measurement("b", "eagle3", 1.2)), 1.2)]
    assert log.replace_measurement("a", []) == 0  # a measurement is replaced, never retracted
    assert log.totals()[1] == 2


def test_a_log_answers_every_view_as_the_duckdb_file_does(tmp_path):
    database, log = MetricsStore(tmp_path / "m.duckdb"), MeasurementLog(tmp_path / "log")
    benchmark = DecodingBenchmarkRow(T0, "bench-1", "cpu", "test", "abc", "smollm2", "rev", "cpu", "float32",
                                     "heldout-v1", "ours-ar", 8, 64, "tokens_per_s", 20.0, 512)
    for store in (database, log):
        for measurement in _history():
            store.record(measurement)
        record_decoding_benchmark(store, "bench-1", [benchmark, replace(benchmark, metric="tau", value=1.0)])
        record_decoding_benchmark(store, "bench-1", [benchmark])  # a rerun of one benchmark run replaces it
    assert log.latest_tau() == database.latest_tau()
    assert log.latest_registered_tau("smollm2", ("heldout-v1",)) == database.latest_registered_tau("smollm2", ("heldout-v1",))
    assert log.tau_over_time() == database.tau_over_time()
    assert log.tau_by_training() == database.tau_by_training()
    assert log.acceptance_curves() == database.acceptance_curves()
    assert decoding_benchmark_rows(log) == decoding_benchmark_rows(database)
    _, latest = log.latest_tau()
    assert [(row[1], row[4]) for row in latest] == [("dspark", "v-a2"), ("eagle3", "v-b2")]
    assert [(int(s), t) for *_, s, _, t, _ in log.tau_by_training()[1]] == [(1200, 1.3), (2400, 1.34)]


@pytest.mark.parametrize("query", [
    "COPY (SELECT 42) TO '{log}/acceptance_metrics/written.parquet'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{log}/acceptance_metrics/*.parquet')",
    "SET enable_external_access = true",
    "ATTACH '{tmp}/other.duckdb'",
    "INSERT INTO acceptance_metrics SELECT * FROM acceptance_metrics",
    "SELECT 1; DROP VIEW latest_tau",
])
def test_sql_over_a_log_reads_only_what_was_recorded(capsys, tmp_path, query):
    log = tmp_path / "log"
    MeasurementLog(log).record(_measurement("a", "dspark", 1.3))
    before = sorted(p.name for p in log.rglob("*"))
    code, _, err = run_cli(["sql", query.format(log=log, tmp=tmp_path), "--db", str(log)], capsys)
    assert code == 2 and "read-only, without file access" in err and "Traceback" not in err
    assert sorted(p.name for p in log.rglob("*")) == before and not (tmp_path / "other.duckdb").exists()
    code, out, err = run_cli(["sql", "SELECT drafter, tau FROM latest_tau", "--db", str(log)], capsys)
    assert code == 0 and "dspark" in out and "1.3" in out, err


def test_bad_logs_are_one_line_naming_the_fix(capsys, tmp_path):
    with pytest.raises(DsparkError, match="no measurement log at .* yet"):
        MeasurementLog(tmp_path / "missing").totals()
    log = MeasurementLog(tmp_path / "log")
    log.record(_measurement("a", "dspark", 1.3))
    junk = tmp_path / "log" / "acceptance_metrics" / "99999999999999999999-junk.parquet"
    junk.write_bytes(b"not parquet")
    code, _, err = run_cli(["sql", "SELECT count(*) FROM acceptance_metrics", "--db", str(tmp_path / "log")], capsys)
    assert code == 2 and "cannot read as acceptance_metrics" in err and "move that file out" in err
    assert len(err.strip().splitlines()) == 1
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(DsparkError, match="cannot be written .* DSPARK_METRICS"):
            MeasurementLog(locked / "log").record(_measurement("a", "dspark", 1.3))


def test_the_store_is_chosen_by_its_location(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DSPARK_METRICS", raising=False)
    default = open_metrics_store()
    assert type(default) is MetricsStore and default.path == tmp_path / "home" / "metrics.duckdb"
    monkeypatch.setenv("DSPARK_METRICS", str(tmp_path / "shared" / "metrics"))
    assert isinstance(open_metrics_store(), MeasurementLog)
    assert type(open_metrics_store(tmp_path / "other.duckdb")) is MetricsStore
    existing = tmp_path / "metrics"  # a DuckDB file without the suffix stays a DuckDB file
    existing.write_bytes(b"")
    assert type(open_metrics_store(existing)) is MetricsStore
    assert isinstance(open_metrics_store(Path(tmp_path / "dir")), MeasurementLog)
