"""`dspark generate`: decode one prompt with or without a drafter and print text + statistics."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.options import core_option
from dspark_cli.output import cell
from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.decoding.metrics import tau
from dspark_core.decoding.scheduler import ScheduleConfig
from dspark_core.decoding.step_cost import decoding_profile, ensure_profile
from dspark_core.drafters.factory import DRAFTER_FORMS, build_drafter
from dspark_core.models import load_target

console = Console()


def generate_command(
    target: str = typer.Option(..., "--target", help="Target model spec (alias, HF id, directory, .gguf)."),
    prompts: list[str] = typer.Option(..., "--prompt", help="Prompt text; repeat the option to decode a batch."),
    drafter: str = typer.Option("none", "--drafter", help=DRAFTER_FORMS + " | champion[:BASE_MODEL] (MLflow registry)"),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    temperature: float = core_option(SamplingConfig, "temperature", "--temperature"),
    top_k: int = core_option(SamplingConfig, "top_k", "--top-k"),
    top_p: float = core_option(SamplingConfig, "top_p", "--top-p"),
    max_new_tokens: int = core_option(GenerationConfig, "max_new_tokens", "--max-new-tokens"),
    block_size: int = core_option(GenerationConfig, "block_size", "--block-size"),
    schedule: str = core_option(ScheduleConfig, "mode", "--schedule"),
    threshold: float = core_option(ScheduleConfig, "threshold", "--threshold"),
    speculative: bool = typer.Option(True, "--speculative/--no-speculative", help="The switch for the draft module."),
    compare: bool = typer.Option(False, "--compare", help="Also decode autoregressively; report speed-up and equality."),
    seed: int = core_option(GenerationConfig, "seed", "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 ... (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text and a table."),
) -> None:
    """Generate from --target, drafting with --drafter, and print the text and decoding statistics.

    Several --prompt options are decoded together as one batch.
    """
    model = load_target(target, device=device, dtype=dtype)
    batch = [model.encode_prompt(prompt, chat=chat) for prompt in prompts]
    for ids in batch:
        model.check_prompt_length(len(ids), max_new_tokens)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        sampling=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p),
        block_size=block_size,
        speculative=speculative,
        seed=seed,
        schedule=ScheduleConfig(mode=schedule, threshold=threshold),
    )
    if drafter == "champion" or drafter.startswith("champion:"):
        from dspark_cli.drafts import champion_path
        from dspark_core.models.spec import slugify

        drafter = str(champion_path(drafter.partition(":")[2] or slugify(target)))
    draft = build_drafter(drafter, model) if speculative else None
    step_costs = None
    if draft:  # the measured pass costs: what the scheduled mode trades against, and the widths passes are padded to
        step_costs = (ensure_profile(model, progress=not as_json)[0] if schedule == "scheduled"
                      else decoding_profile(model, config.block_size, progress=not as_json))
    runs = {"speculative" if draft else "autoregressive": SpeculativeEngine(model, draft, step_costs=step_costs)}
    if compare and draft:
        runs["autoregressive"] = SpeculativeEngine(model, None)
    results = {name: engine.generate(batch, config) for name, engine in runs.items()}

    main_name = next(iter(results))
    main = results[main_name]
    report = {
        "target": model.spec,
        "target_revision": model.revision,
        "drafter": drafter if draft else "none",
        "requests": [
            {
                "prompt_tokens": len(output.prompt_tokens),
                "text": model.decode(output.tokens),
                "tokens": output.tokens,
                "finish_reason": output.finish_reason,
                "rounds": len(output.rounds),
                "tau": tau(output.rounds),
            }
            for output in main.outputs
        ],
        "stats": main.stats.to_dict(),
    }
    if "autoregressive" in results and main_name != "autoregressive":
        base = results["autoregressive"]
        report["baseline_stats"] = base.stats.to_dict()
        report["identical_to_autoregressive"] = all(
            b.tokens == m.tokens for b, m in zip(base.outputs, main.outputs)
        )
        report["speedup"] = main.stats.tokens_per_s / base.stats.tokens_per_s if base.stats.tokens_per_s else None

    if as_json:
        typer.echo(json.dumps(report))
        return
    for number, request in enumerate(report["requests"], start=1):
        title = f"{model.spec} · drafter {report['drafter']}" + (f" · request {number}" if len(batch) > 1 else "")
        console.rule(cell(title))
        console.print(cell(request["text"]), highlight=False)
    console.rule()
    table = Table(title="decoding statistics")
    table.add_column("metric")
    for name in results:
        table.add_column(cell(name), justify="right")
    for label, getter in _ROWS:
        table.add_row(label, *(getter(r.stats) for r in results.values()))
    console.print(table)
    if "speedup" in report:
        console.print(
            f"speed-up over autoregressive: [bold]{report['speedup']:.2f}x[/]  ·  output identical: "
            f"[bold]{report['identical_to_autoregressive']}[/]"
        )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_ROWS = [
    ("new tokens", lambda s: str(s.new_tokens)),
    ("rounds", lambda s: str(s.rounds)),
    ("τ (accepted length)", lambda s: _fmt(s.tau)),
    ("tokens/s", lambda s: _fmt(s.tokens_per_s, 1)),
    ("draft ms / round", lambda s: _fmt(s.draft_ms_per_round)),
    ("verify ms / round", lambda s: _fmt(s.verify_ms_per_round)),
    ("prefill ms", lambda s: _fmt(s.prefill_ms, 1)),
    ("prefix accept @1..k", lambda s: " ".join(_fmt(v) for v in s.prefix_accept) or "-"),
    ("cond. accept @1..k", lambda s: " ".join(_fmt(v) for v in s.cond_accept) or "-"),
]


