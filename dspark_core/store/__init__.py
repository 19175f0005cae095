"""Longitudinal metrics in DuckDB (plain duckdb, no orchestration): schema, idempotent writes, read-only queries."""

from dspark_core.store.acceptance import AcceptanceRow, MetricsStore, measurement_key
from dspark_core.store.benchmarks import DecodingBenchmarkRow, decoding_benchmark_rows, record_decoding_benchmark

__all__ = ["AcceptanceRow", "DecodingBenchmarkRow", "MetricsStore", "decoding_benchmark_rows", "measurement_key",
           "record_decoding_benchmark"]
