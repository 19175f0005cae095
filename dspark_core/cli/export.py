"""`dspark export`: write a trained draft as a Hugging Face-style directory or in speculators' layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_core.export import export_draft

console = Console()


def export_command(
    checkpoint: Path = typer.Argument(..., help="A draft checkpoint directory (from `dspark train`)."),
    fmt: str = typer.Option("hf", "--format", help="hf or speculators."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: next to the checkpoint)."),
) -> None:
    """Export a draft checkpoint; loading the export back gives bit-identical logits."""
    target_dir = out or checkpoint.with_name(f"{checkpoint.name}-{fmt}")
    path = export_draft(checkpoint, target_dir, fmt)
    console.print(f"[green]exported[/] {checkpoint} -> {path} ({fmt})")
