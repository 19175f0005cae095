"""`dspark export`: write a trained draft as a Hugging Face-style directory or in speculators' layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.options import core_option
from dspark_cli.output import literal
from dspark_core.recipes.export import ExportConfig, export

console = Console()


def export_command(
    checkpoint: Path = typer.Argument(..., help="A draft checkpoint directory (from `dspark train`)."),
    fmt: str = core_option(ExportConfig, "format", "--format"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: $DSPARK_HOME/exports/<target>/"
                                       "<drafter>/<run>-<format>); an earlier export there is replaced."),
) -> None:
    """Export a draft checkpoint; loading the export back gives bit-identical logits."""
    report = export(checkpoint, ExportConfig(format=fmt), out=out)
    console.print(f"[green]exported[/] {literal(str(checkpoint))} -> {literal(str(report.path))} ({report.format}, "
                  f"{report.size_mib} MiB, weights sha256 {report.weights_sha256[:12]})")
