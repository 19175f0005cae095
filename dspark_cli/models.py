"""`dspark models list|import|show|register|derive`."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.options import core_option
from dspark_cli.output import cell, literal
from dspark_core.models import PACKAGED_MODELS, find_imported, list_snapshots, load_target, resolve_snapshot
from dspark_core.models.derive import DeriveConfig, check_derived_name, derive_model
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
        aliases.add_row(cell(alias), cell("yes" if model.is_installed() else f"no ({model.install_hint()})"),
                        cell(imported.path.name if imported else "-"), cell(model.description))
    console.print(aliases)
    snapshots = Table(title=cell(f"Imported snapshots in {dspark_home() / 'models' / 'snapshots'}"))
    snapshots.add_column("spec", no_wrap=True)
    for column in ("type", "layers", "d", "V", "revision", "imported"):
        snapshots.add_column(column)
    for snap in list_snapshots():
        i = snap.info
        snapshots.add_row(*map(cell, (i["spec"], i["model_type"], i["num_layers"], i["hidden_size"], i["vocab_size"],
                                      i["revision"][:8], str(i["created_at"])[:10])))
    console.print(snapshots)


@models_app.command("import")
def import_model(
    spec: str = typer.Argument(..., help="Packaged alias, Hugging Face id, local directory or .gguf file."),
    refresh: bool = typer.Option(False, help="Re-import even if a snapshot exists."),
) -> None:
    """Import SPEC once into a content-addressed safetensors snapshot (later loads take seconds)."""
    with console.status(f"importing {literal(spec)} (the first import of a GGUF file takes a while)..."):
        snap = resolve_snapshot(spec, refresh=refresh)
    console.print(f"[green]imported[/] {literal(spec)} -> {literal(snap.path)}  (revision {literal(snap.revision[:12])})",
                  highlight=False)


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
    console.print(f"registered {literal(spec)} as [bold]{literal(slug)}[/]; {len(registered_models())} base model(s) "
                  f"registered", highlight=False)


@models_app.command("derive")
def derive(
    parent: str = typer.Argument(..., help="The model X to derive from (any model spec)."),
    name: str = typer.Option(..., "--name", help="Name of the variant X′; its spec becomes derived:NAME."),
    method: str = core_option(DeriveConfig, "method", "--method"),
    bits: int = core_option(DeriveConfig, "bits", "--bits"),
    group_size: int = core_option(DeriveConfig, "group_size", "--group-size"),
    text: str = core_option(DeriveConfig, "text", "--text"),
    steps: int = core_option(DeriveConfig, "steps", "--steps"),
    learning_rate: float = core_option(DeriveConfig, "learning_rate", "--learning-rate"),
    sequence_length: int = core_option(DeriveConfig, "sequence_length", "--sequence-length"),
    batch_size: int = core_option(DeriveConfig, "batch_size", "--batch-size"),
    seed: int = core_option(DeriveConfig, "seed", "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing derived model of that name."),
    register: bool = typer.Option(False, "--register", help="Also register X′ as a base model (the pipelines then "
                                                            "prepare its data; the transfer report evaluates X's "
                                                            "drafts on it)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Make a variant X′ of PARENT with the same tokenizer (re-quantized, or briefly fine-tuned on other text),
    to test whether drafts trained on PARENT survive an update of their base model."""
    config = DeriveConfig(method=method, bits=bits, group_size=group_size, text=text, steps=steps,
                          learning_rate=learning_rate, sequence_length=sequence_length, batch_size=batch_size, seed=seed)
    check_derived_name(name)  # before the (slow) load of the parent
    report = derive_model(load_target(parent, device=device, dtype="float32"), name, config, overwrite=overwrite,
                          progress=True)
    stats = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.stats.items())
    console.print(f"[green]derived[/] {literal(report.spec)} from {literal(parent)} by {literal(method)} in "
                  f"{report.seconds:.0f} s ({literal(stats)}) -> {literal(report.path)}", highlight=False)
    if register:
        slug = register_model(report.spec)
        console.print(f"registered {literal(report.spec)} as [bold]{literal(slug)}[/]", highlight=False)
