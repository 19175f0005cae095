"""`dspark models list|import|show`."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_core.models import PACKAGED_MODELS, find_imported, list_snapshots, resolve_snapshot
from dspark_core.models.registry import register_model, registered_models
from dspark_core.paths import dspark_home

models_app = typer.Typer(no_args_is_help=True, help="Target models: packaged aliases and imported snapshots.")
console = Console()


@models_app.command("list")
def list_models() -> None:
    """Packaged aliases (installed or not) and every imported snapshot under $DSPARK_HOME."""
    aliases = Table(title="Packaged models")
    aliases.add_column("alias", no_wrap=True)
    for column in ("installed", "imported", "description"):
        aliases.add_column(column)
    for alias, model in PACKAGED_MODELS.items():
        imported = find_imported(alias)
        aliases.add_row(alias, "yes" if model.is_installed() else f"no ({model.install_hint()})",
                        imported.path.name if imported else "-", model.description)
    console.print(aliases)
    snapshots = Table(title=f"Imported snapshots in {dspark_home() / 'models' / 'snapshots'}")
    snapshots.add_column("spec", no_wrap=True)
    for column in ("type", "layers", "d", "V", "revision", "imported"):
        snapshots.add_column(column)
    for snap in list_snapshots():
        i = snap.info
        snapshots.add_row(i["spec"], i["model_type"], str(i["num_layers"]), str(i["hidden_size"]),
                          str(i["vocab_size"]), i["revision"][:8], i["created_at"][:10])
    console.print(snapshots)


@models_app.command("import")
def import_model(
    spec: str = typer.Argument(..., help="Packaged alias, Hugging Face id, local directory or .gguf file."),
    refresh: bool = typer.Option(False, help="Re-import even if a snapshot exists."),
) -> None:
    """Import SPEC once into a content-addressed safetensors snapshot (later loads take seconds)."""
    with console.status(f"importing {spec} (the first import of a GGUF file takes a while)..."):
        snap = resolve_snapshot(spec, refresh=refresh)
    console.print(f"[green]imported[/] {spec} -> {snap.path}  (revision {snap.revision[:12]})")


@models_app.command("show")
def show_model(spec: str = typer.Argument(..., help="A model spec; imported first if needed.")) -> None:
    """Print a snapshot's record: source, revision, architecture and dimensions, as JSON."""
    snap = resolve_snapshot(spec)
    console.print_json(json.dumps({"path": str(snap.path), **snap.info}))


@models_app.command("register")
def register(
    spec: str = typer.Argument(..., help="A model spec to train and evaluate drafts for."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Its prompt source for the pipelines: a .jsonl file or "
                                          "hf:NAME (default: self-generated, which needs a chat template)."),
) -> None:
    """Add SPEC to the registered base models (the pipelines' partitions); idempotent."""
    slug = register_model(spec, prompts)
    console.print(f"registered {spec} as [bold]{slug}[/]; {len(registered_models())} base model(s) registered")
