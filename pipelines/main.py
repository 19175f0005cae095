"""`make run`: the main job on the embedded default. Registers the packaged SmolLM2 (or --model), then
materializes the whole asset graph for it in the platform's Dagster instance ($DSPARK_HOME/dagster),
one drafter partition after the other, and prints the evaluation table and where to look next.

A stage whose last asset is already materialized for the partition is skipped, and the stages that do run reuse
what is on disk (prompts, responses, cache, finished training). Once every stage is there, running it again is
the next cycle of continual training: the dataset grows by new prompts (only they are answered and cached), and
each drafter continues from its latest registered draft; the champion rule decides as ever (`--no-continue`: only
print the report)."""

import argparse
import os
import sys
import time

import dagster as dg
from rich.console import Console
from rich.table import Table

from dspark_core.drafters.registry import ALGORITHMS
from dspark_core.errors import DsparkError
from dspark_core.models.registry import register_model
from dspark_core.recipes.champion import ChampionPolicy
from dspark_core.recipes.evaluation import EvalConfig
from dspark_core.settings import default_of
from dspark_cli.output import literal
from pipelines.instance import POSTGRES_URL, use_dagster_home
from pipelines.partitions import BASE_MODEL, model_drafter_key
from pipelines.postgres import lost_database, masked

console = Console(width=max(Console().width, 150))  # the report table needs the room, even when piped
DATA_STAGE = ["base_model", "prompt_dataset", "target_responses", "target_feature_cache"]
DRAFT_STAGE = ["draft_checkpoint", "calibrated_draft", "exported_draft", "speculative_eval", "champion_draft"]
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _materialized(instance: dg.DagsterInstance, asset: str, partition: str, *, run_succeeded: bool = False) -> bool:
    """Is `asset` materialized for `partition` (and, if asked, did that run succeed, checks included)?"""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    if not records or not run_succeeded:
        return bool(records)
    run = instance.get_run_by_id(records[0].run_id)
    return run is None or run.is_success


#: what a new cycle asks of the data stage: new prompts added to the dataset
GROW = {"ops": {"prompt_dataset": {"config": {"grow": True}}}}


def stale_drafters(instance: dg.DagsterInstance, slug: str, drafters: list[str]) -> list[str]:
    """The drafters not evaluated since the base model's feature cache was last materialized (never, or on
    older data): what a run must still train before it may start a new cycle."""
    def latest(asset: str, partition: str) -> int | None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
        return records[0].storage_id if records else None

    cache = latest(DATA_STAGE[-1], slug) or 0
    return [d for d in drafters if (latest("speculative_eval", str(model_drafter_key(slug, d))) or -1) < cache]


def _run_stage(defs, instance, assets: list[str], partition_key, label: str, config: dict | None = None) -> tuple[bool, bool]:
    """Materialize `assets` (with their checks) for one partition. Returns (everything succeeded, only
    blocking checks failed) — a check that refuses a draft is a result, not an error."""
    started = time.perf_counter()
    console.rule(f"[bold]{label}")
    try:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], selection=dg.AssetSelection.assets(*assets), partition_key=partition_key,
            instance=instance, resources=defs.resources, run_config={**QUIET, **(config or {})}, raise_on_error=False,
            tags={"dspark/origin": "make run"})
    except Exception as exc:  # the instance's own storage failed: the run cannot even record that it failed
        if (reason := lost_database(exc)) is None:
            raise
        where = f" ({POSTGRES_URL}={masked(os.environ[POSTGRES_URL])})" if os.environ.get(POSTGRES_URL) else ""
        raise DsparkError(f"the Dagster instance's database{where} stopped answering during {label}: {reason}; start "
                          f"it again and run the same command: stages that finished are kept, and this one continues "
                          f"from what it had written (every file is written whole or not at all)") from None
    failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    failed_steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                    and not any(e.step_key.endswith(check) for check in failed_checks)]
    if result.success:
        status = "[green]done[/]"
    else:
        status = "; ".join(
            ([f"[yellow]blocking check failed: {', '.join(failed_checks)} (what depends on it did not run)[/]"]
             if failed_checks else []) + ([f"[red]failed: {', '.join(failed_steps)}[/]"] if failed_steps else []))
    console.print(f"{label}: {status} in {(time.perf_counter() - started) / 60:.1f} min")
    return result.success, not failed_steps


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except DsparkError as exc:  # bad input or a store that does not answer: one line, no traceback
        Console(stderr=True, highlight=False).print(f"error: {exc}", markup=False)
        return 2


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="base model spec to register and run (default: packaged SmolLM2)")
    parser.add_argument("--drafters", default=",".join(ALGORITHMS), help="comma-separated drafter partitions")
    parser.add_argument("--no-continue", action="store_true", help="when everything is already trained and evaluated, "
                        "print the report instead of running the next cycle (more prompts, drafts continued)")
    args = parser.parse_args(argv)
    drafters = [d.strip() for d in args.drafters.split(",") if d.strip()]
    unknown = sorted(set(drafters) - set(ALGORITHMS))
    if unknown:
        parser.error(f"unknown drafter(s) {unknown}; choose from {', '.join(ALGORITHMS)}")

    started = time.perf_counter()
    home = use_dagster_home()
    from pipelines.definitions import defs  # after DAGSTER_HOME is set

    slug = register_model(args.model)
    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(BASE_MODEL, slug):
        instance.add_dynamic_partitions(BASE_MODEL, [slug])
    console.print(f"base model [bold]{literal(args.model)}[/] (partition {slug}); Dagster instance {literal(home)}",
                  highlight=False)

    # The data stage must have succeeded with its checks: a cache that failed its check is never trained on.
    data_ok = _materialized(instance, DATA_STAGE[-1], slug, run_succeeded=True)
    stale = stale_drafters(instance, slug, drafters) if data_ok else drafters
    complete = data_ok and not stale
    next_cycle = complete and not args.no_continue
    if next_cycle:
        console.print(f"[bold]everything for {slug} is trained and evaluated: next cycle[/] — the dataset grows by new "
                      f"prompts and each drafter continues from its latest registered draft (--no-continue: report only)")
        data_ok, _ = _run_stage(defs, instance, DATA_STAGE, slug, f"data for {slug} (grown)", GROW)
    elif data_ok:
        console.print(f"data for {slug}: already materialized, reused")
    else:
        data_ok, _ = _run_stage(defs, instance, DATA_STAGE, slug, f"data for {slug}")
    ok = data_ok
    if data_ok and (next_cycle or not complete):
        for drafter in drafters:
            key = model_drafter_key(slug, drafter)
            if not next_cycle and drafter not in stale:
                console.print(f"{drafter}: already trained and evaluated, reused")
                continue
            # A failing blocking check (not lossless, worse than the champion) stops this drafter's chain only.
            ok = _run_stage(defs, instance, DRAFT_STAGE, key, f"{drafter} for {slug}")[1] and ok
        ok = _run_stage(defs, instance, ["metrics_history"], None, "metrics_history")[0] and ok
    print_report(slug, drafters)
    print_growth(slug)
    console.print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    return 0 if ok else 1


def print_report(slug: str, drafters: list[str]) -> None:
    from pipelines.resources import MetricsDatabase, MLflowResource

    store = MetricsDatabase().store()
    tracking = MLflowResource().tracking()
    champion = tracking.champion(slug)
    if not store.path.exists():
        console.print("[red]no evaluation was recorded[/]")
        return
    suites = default_of(EvalConfig, "suites")  # what speculative_eval decodes by default
    columns, rows = store.latest_registered_tau(slug, suites, temperature=0.0)
    latest = [dict(zip(columns, row)) for row in rows]
    table = Table(title=f"speculative decoding on {slug}: {', '.join(suites)} suite, greedy, CPU (latest evaluation per "
                        f"drafter)")
    for column in ("drafter", "version", "τ", "speed-up vs AR", "tok/s", "draft ms/round", "verify ms/round",
                   "cond. accept @1..k", "champion"):
        table.add_column(column, justify="right")
    for row in sorted(latest, key=lambda r: -r["tau"]):
        table.add_row(row["drafter"], str(row["draft_version"]), f"{row['tau']:.2f}", f"{row['speedup']:.2f}x",
                      f"{row['tokens_per_s']:.1f}", f"{row['draft_ms_per_round']:.1f}", f"{row['verify_ms_per_round']:.1f}",
                      row["cond_accept"] or "",
                      "★" if champion is not None and str(champion.version) == str(row["draft_version"]) else "")
    console.print(table)
    if champion is None and latest:
        console.print(f"[yellow]no champion:[/] no evaluated draft met the champion rule (among others, decoding at "
                      f"least {default_of(ChampionPolicy, 'min_speedup')}x as fast as autoregressive decoding); "
                      f"`--drafter champion` has nothing to serve")
    missing = sorted(set(drafters) - {row["drafter"] for row in latest})
    if missing:
        console.print(f"[yellow]not evaluated (a step or blocking check failed; see the Dagster UI):[/] {', '.join(missing)}")
    console.print(
        "[bold]where to look[/]\n"
        "  make ui                       Dagster UI http://127.0.0.1:3000 (asset graph, metadata, checks)\n"
        "                                MLflow UI  http://127.0.0.1:5000 (training/eval runs, draft registry)\n"
        f"  .venv/bin/dspark sql \"SELECT * FROM latest_tau\"       metrics in {literal(store.path)}\n"
        f"  .venv/bin/dspark drafts list {slug}              registered drafts and the champion")


def print_growth(slug: str) -> None:
    """Each drafter's evaluated versions against the training steps of their line: the curve cycles move."""
    from pipelines.resources import MetricsDatabase

    store = MetricsDatabase().store()
    if not store.path.exists():
        return
    columns, rows = store.tau_by_training(temperature=0.0)
    lines: dict[str, list[str]] = {}
    for row in (dict(zip(columns, r)) for r in rows if r[0] == slug):
        if row["tau"] is not None:
            lines.setdefault(row["drafter"], []).append(
                f"v{row['draft_version']} {row['tau']:.2f} ({row['cumulative_steps']} steps"
                + (f", {row['speedup']:.2f}x)" if row["speedup"] is not None else ")"))
    if any(len(points) > 1 for points in lines.values()):
        console.print("[bold]τ as drafts continued[/] (each evaluated version, by training steps over its line)")
        for drafter, points in sorted(lines.items()):
            console.print(f"  {drafter:<7} " + " → ".join(points), highlight=False)


if __name__ == "__main__":
    sys.exit(main())
