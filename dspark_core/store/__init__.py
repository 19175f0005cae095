"""Longitudinal metrics in DuckDB (plain duckdb, no orchestration): schema, idempotent writes, read-only queries."""

from dspark_core.store.acceptance import AcceptanceRow, MetricsStore, measurement_key

__all__ = ["AcceptanceRow", "MetricsStore", "measurement_key"]
