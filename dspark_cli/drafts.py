"""`dspark drafts list|promote|rollback`: the MLflow draft registry per base model.

MLflow lives outside dspark_core (which never imports it): these commands use pipelines.tracking."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.output import cell, literal

drafts_app = typer.Typer(no_args_is_help=True, help="Registered draft versions and the champion alias (MLflow).")
console = Console(width=max(Console().width, 120))  # the table needs the room, even when piped
_URI = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the SQLite store under $DSPARK_HOME).")


def _tracking(uri: str | None):
    from pipelines.tracking import Tracking

    return Tracking(uri)


@drafts_app.command("list")
def list_command(base_model: str = typer.Argument(..., help="Base model key (see `dspark models list`)."),
                 tracking_uri: Optional[str] = _URI) -> None:
    """Every registered draft version of BASE_MODEL, with its τ and which one is champion."""
    from pipelines.tracking import PROMOTED_AT, ROLLED_BACK, TAU_TAG, registered_model_name

    tracking = _tracking(tracking_uri)
    versions = tracking.versions(base_model)
    if not versions:
        console.print(f"no drafts registered as {literal(repr(registered_model_name(base_model)))}", highlight=False)
        return
    champion = tracking.champion(base_model)
    table = Table(title=cell(registered_model_name(base_model)))
    for column in ("version", "drafter", "format", "τ", "grew from", "steps (line)", "promoted", "champion", "run"):
        table.add_column(column, no_wrap=True)
    for v in versions:
        promoted = v.tags.get(PROMOTED_AT)
        when = datetime.fromtimestamp(int(promoted) / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M") if promoted else ""
        if v.tags.get(ROLLED_BACK):
            when += " (rolled back)"
        parent = v.tags.get("dspark.parent_version", "")
        table.add_row(*map(cell, (
            v.version, v.tags.get("drafter", ""), v.tags.get("format", ""), v.tags.get(TAU_TAG, "")[:6],
            "scratch" if parent == "none" else parent.replace(":", " v") if ":" in parent else f"v{parent}" if parent else "",
            v.tags.get("dspark.cumulative_steps", ""), when, "★" if champion is not None and champion.version == v.version else "",
            (v.run_id or "")[:8])))
    console.print(table)


@drafts_app.command("promote")
def promote_command(base_model: str = typer.Argument(...), version: str = typer.Argument(...),
                    tracking_uri: Optional[str] = _URI) -> None:
    """Make VERSION the champion of BASE_MODEL by hand."""
    from dspark_core.errors import DsparkError

    tracking = _tracking(tracking_uri)
    if version not in {str(v.version) for v in tracking.versions(base_model)}:
        raise DsparkError(f"{base_model!r} has no registered draft version {version!r}; see `dspark drafts list {base_model}`")
    tracking.promote(base_model, version)
    console.print(f"champion of {literal(base_model)}: version {literal(version)}", highlight=False)


@drafts_app.command("rollback")
def rollback_command(base_model: str = typer.Argument(...), tracking_uri: Optional[str] = _URI) -> None:
    """Move BASE_MODEL's champion alias back to the previously promoted version (base weights untouched)."""
    old, new = _tracking(tracking_uri).rollback(base_model)
    console.print(f"champion of {literal(base_model)}: version {literal(old)} -> {literal(new)}", highlight=False)


def champion_path(base_model: str, tracking_uri: str | None = None):
    """Local directory of BASE_MODEL's champion draft (for `--drafter champion`)."""
    from dspark_core.errors import DrafterSpecError

    tracking = _tracking(tracking_uri)
    champion = tracking.champion(base_model)
    if champion is None:
        raise DrafterSpecError(f"base model {base_model!r} has no champion draft yet; train one (`make run`, the Dagster "
                               f"UI) or promote one with `dspark drafts promote`")
    return tracking.local_path(champion)
