"""A view over the DuckDB metrics: latest τ per base model and drafter, τ over time, acceptance curves."""

import dagster as dg

from assets.speculative_eval import speculative_eval
from dspark_core.evaluation.plots import acceptance_curves
from dspark_core.paths import dspark_home
from pipelines.metadata import image, markdown_table
from pipelines.resources import MetricsDatabase


@dg.asset(deps=[speculative_eval], group_name="evaluation", kinds={"duckdb"})
def metrics_history(context: dg.AssetExecutionContext, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Summarize every measurement in DuckDB (all base models, all drafters, all days): the `latest_tau`,
    `tau_over_time` and `acceptance_curves` views as tables and a plot. Query the same views with
    `dspark sql`."""
    store = metrics_db.store()
    latest_columns, latest = store.query(
        "SELECT base_model, drafter, benchmark, temperature, draft_version, tau, speedup, draft_ms_per_round, "
        "verify_ms_per_round, strftime(recorded_at, '%Y-%m-%d %H:%M') AS recorded FROM latest_tau")
    time_columns, over_time = store.query(
        "SELECT strftime(day, '%Y-%m-%d') AS day, base_model, drafter, domain, tau, rounds FROM tau_over_time "
        "ORDER BY day DESC LIMIT 50")
    _, curve_rows = store.query(
        "SELECT base_model || ' · ' || drafter || ' · ' || benchmark, position, value FROM acceptance_curves "
        "WHERE metric = 'cond_accept' AND temperature = 0 ORDER BY 1, 2")
    curves: dict[str, dict[int, float]] = {}
    for name, position, value in curve_rows:
        curves.setdefault(name, {})[position] = value
    plot = acceptance_curves(curves, dspark_home() / "reports" / "acceptance_curves.png",
                             title="conditional acceptance by position (latest, greedy)")
    _, totals = store.query("SELECT count(*), count(DISTINCT measurement_key) FROM acceptance_metrics")
    return dg.MaterializeResult(metadata={
        "rows": totals[0][0],
        "measurements": totals[0][1],
        "latest_tau": markdown_table(latest_columns, [list(r) for r in latest]),
        "tau_over_time": markdown_table(time_columns, [list(r) for r in over_time]),
        "acceptance_curves": image(plot, "acceptance curves"),
        "duckdb_file": dg.MetadataValue.path(str(store.path)),
    })
