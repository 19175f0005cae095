"""Longitudinal metrics in DuckDB (plain duckdb, no orchestration): schema, idempotent writes, read-only queries;
one DuckDB file, or a log of Parquet files for writers on many machines (`open_metrics_store` picks)."""

from dspark_core.store.acceptance import AcceptanceRow, MetricsStore, measurement_key
from dspark_core.store.benchmarks import DecodingBenchmarkRow, decoding_benchmark_rows, record_decoding_benchmark
from dspark_core.store.measurement_log import MeasurementLog, open_metrics_store

__all__ = ["AcceptanceRow", "DecodingBenchmarkRow", "MeasurementLog", "MetricsStore", "decoding_benchmark_rows",
           "measurement_key", "open_metrics_store", "record_decoding_benchmark"]
