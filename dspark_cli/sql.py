"""`dspark sql`: read-only SQL over the metrics database, printed as a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.output import cell
from dspark_core.store import open_metrics_store

console = Console()


def sql_command(
    query: str = typer.Argument(..., help="A SELECT (or DESCRIBE/SHOW/...) statement; writes are refused."),
    database: Optional[Path] = typer.Option(None, "--db", help="Metrics store: a DuckDB file, or a measurement-log directory (default: $DSPARK_METRICS, else $DSPARK_HOME/metrics.duckdb)."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON objects, one per line."),
    limit: int = typer.Option(200, "--max-rows", min=1, help="Print at most this many rows."),
) -> None:
    """Query acceptance_metrics and its views (latest_tau, tau_over_time, acceptance_curves) read-only."""
    store = open_metrics_store(database)
    columns, rows = store.query(query)
    if as_json:
        for row in rows[:limit]:
            print(json.dumps(dict(zip(columns, row)), default=str))  # JSON escapes control characters
        return
    table = Table(show_lines=False)
    for column in columns:
        table.add_column(cell(column), overflow="fold")
    for row in rows[:limit]:
        # values as plain text: a stored '[/]' is not markup, a stored escape sequence does not reach the terminal
        table.add_row(*(cell("NULL" if v is None else f"{v:.4g}" if isinstance(v, float) else v) for v in row))
    console.print(table)
    shown = min(len(rows), limit)
    console.print(f"{len(rows)} row(s)" + (f", first {shown} shown" if shown < len(rows) else ""))
