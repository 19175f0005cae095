"""`dspark profile`: the target's measured verification cost per batch shape, which scheduled verification uses."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.options import comma_ints, core_option, report_table
from dspark_cli.output import cell
from dspark_core.decoding.step_cost import ProfileConfig, ensure_profile
from dspark_core.models import load_target

console = Console()


def profile_command(
    target: str = typer.Option(..., "--target", help="Target model spec (alias, HF id, directory, .gguf)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Batch sizes to measure, comma-separated "
                                       f"(default {','.join(map(str, ProfileConfig().rows))})."),
    max_width: int = core_option(ProfileConfig, "max_width", "--max-width"),
    context_tokens: int = core_option(ProfileConfig, "context_tokens", "--context-tokens"),
    repetitions: int = core_option(ProfileConfig, "repetitions", "--repetitions"),
    rebuild: bool = typer.Option(False, "--rebuild", help="Measure again even if a current profile is stored."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 ... (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the stored profile as JSON."),
) -> None:
    """Print the step-cost profile of --target on this device: median ms of one verification pass per number
    of concurrent requests and tokens per request. Measured and stored when missing or stale."""
    model = load_target(target, device=device, dtype=dtype)
    config = ProfileConfig(rows=comma_ints(rows) or ProfileConfig().rows, max_width=max_width,
                           context_tokens=context_tokens, repetitions=repetitions)
    profile, reason = ensure_profile(model, config, rebuild=rebuild, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(profile.to_dict()))
        return
    columns, table_rows = profile.table()
    console.print(report_table(f"{model.spec} on {profile.device} ({profile.dtype}), {profile.context_tokens} tokens "
                               f"of context: ms per verification pass", columns, table_rows, digits=1))
    relative = profile.relative_to_single_step()[0]
    console.print("one request, cost in autoregressive steps: "
                  + "  ".join(f"{w} tok {r:.2f}" for w, r in zip(profile.widths, relative)), highlight=False)
    console.print(cell(f"{'measured now (' + reason + ')' if reason else 'stored'}: {profile.path}"), highlight=False)
