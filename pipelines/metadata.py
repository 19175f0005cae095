"""Helpers the thin assets share: reading an upstream materialization's metadata (artefacts travel as
paths under $DSPARK_HOME, not through an IO manager), MLflow tags, and UI metadata values."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dagster as dg


def upstream(context, asset: str, partition_key: str) -> dict[str, Any]:
    """The latest materialization metadata of `asset` for `partition_key`, as plain values."""
    found = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition_key]), limit=1)
    if not found.records:
        raise dg.Failure(f"{asset} has no materialization for partition {partition_key!r}; materialize it first")
    metadata = found.records[0].asset_materialization.metadata
    return {key: value.value for key, value in metadata.items()}


def upstream_path(context, asset: str, partition_key: str, key: str = "path") -> Path:
    path = Path(upstream(context, asset, partition_key)[key])
    if not path.exists():
        raise dg.Failure(f"{asset} for {partition_key!r} points at {path}, which no longer exists; re-materialize {asset}")
    return path


def run_tags(context, asset: str) -> dict[str, str]:
    """MLflow tags linking a run back to Dagster."""
    return {"dagster.run_id": context.run.run_id, "dagster.asset": asset,
            "dagster.partition": str(context.partition_key) if context.has_partition_key else ""}


def image(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the UI (markdown with an embedded data URI)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def markdown_table(columns: list[str], rows: list[list]) -> dg.MetadataValue:
    def cell(value) -> str:
        if value is None:
            return "–"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def directory_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 2)
