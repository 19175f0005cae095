"""A view over the DuckDB metrics: latest τ per base model and drafter, τ over time, acceptance curves."""

import dagster as dg

from assets.speculative_eval import speculative_eval
from dspark_core.evaluation.plots import acceptance_curves, tau_over_training
from dspark_core.paths import dspark_home
from pipelines.metadata import image, markdown_table
from pipelines.resources import MetricsDatabase


@dg.asset(deps=[speculative_eval], group_name="evaluation", kinds={"duckdb"})
def metrics_history(context: dg.AssetExecutionContext, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Summarize every measurement in DuckDB (all base models, all drafters, all days): the `latest_tau`,
    `tau_over_time`, `acceptance_curves` and `tau_by_training` views as tables, the acceptance curves, and τ of
    each evaluated draft against the training steps its line of drafts had (continued drafts grow along it).
    Query the same views with `dspark sql`."""
    store = metrics_db.store()
    latest_columns, latest = store.latest_tau()
    time_columns, over_time = store.tau_over_time(limit=50)
    curves = {" · ".join(key): rates for key, rates in store.acceptance_curves(temperature=0.0).items()}
    plot = acceptance_curves(curves, dspark_home() / "reports" / "acceptance_curves.png",
                             title="conditional acceptance by position (latest, greedy)")
    training_columns, by_training = store.tau_by_training(temperature=0.0)
    series: dict[str, list] = {}
    for base, drafter, version, benchmark, steps, _, tau, _ in by_training:
        series.setdefault(f"{base} · {drafter} · {benchmark}", []).append((steps, tau, version))
    growth = tau_over_training(series, dspark_home() / "reports" / "tau_over_training.png")
    rows, measurements = store.totals()
    return dg.MaterializeResult(metadata={
        "rows": rows,
        "measurements": measurements,
        "latest_tau": markdown_table(latest_columns, [list(r) for r in latest]),
        "tau_over_time": markdown_table(time_columns, [list(r) for r in over_time]),
        "acceptance_curves": image(plot, "acceptance curves"),
        "tau_by_training": markdown_table(training_columns, [list(r) for r in by_training[-50:]]),
        "tau_over_training": image(growth, "tau against cumulative training steps"),
        "duckdb_file": dg.MetadataValue.path(str(store.path)),
    })
