"""The DuckDB schema, applied as numbered migrations on first use (schema_version records what ran).

acceptance_metrics is long form, one row per measured value (docs/architecture.md, "Metrics store"). `measurement_key` identifies
one measurement: writing the same key again replaces its rows instead of adding duplicates.
"""

from __future__ import annotations

_V1_COLUMNS = (
    ("recorded_at", "TIMESTAMPTZ NOT NULL"),
    ("measurement_key", "VARCHAR NOT NULL"),
    ("run_id", "VARCHAR"),  # the orchestrator's run id (Dagster), or the CLI's
    ("mlflow_run_id", "VARCHAR"),
    ("base_model", "VARCHAR NOT NULL"),
    ("base_model_revision", "VARCHAR"),
    ("drafter", "VARCHAR NOT NULL"),
    ("draft_checkpoint", "VARCHAR"),
    ("draft_version", "VARCHAR"),  # model-registry version of the draft, when registered
    ("benchmark", "VARCHAR NOT NULL"),
    ("domain", "VARCHAR NOT NULL"),
    ("temperature", "DOUBLE NOT NULL"),
    ("block_size", "INTEGER NOT NULL"),
    ("context_bucket", "VARCHAR NOT NULL"),
    ("metric", "VARCHAR NOT NULL"),
    ("position", "INTEGER"),  # draft position k for per-position metrics, else NULL
    ("value", "DOUBLE"),
    ("n", "BIGINT"),  # what the value was measured on: rounds for acceptance, generated tokens for speed
    ("code_version", "VARCHAR"),
)
#: added by migration 2: how each round chose how many drafts to verify (fixed, threshold, scheduled), and how
#: many requests were decoded at once (1 = one request at a time, the latency view)
_V2_COLUMNS = (
    ("schedule", "VARCHAR DEFAULT 'fixed'"),
    ("concurrency", "INTEGER DEFAULT 1"),
)
ACCEPTANCE_COLUMNS = _V1_COLUMNS + _V2_COLUMNS

_TABLE = "CREATE TABLE IF NOT EXISTS acceptance_metrics (\n  " + ",\n  ".join(
    f"{name} {kind}" for name, kind in _V1_COLUMNS) + "\n)"

# Views answer the questions users ask most; 'all'/'all' rows are the whole benchmark.
_VIEWS = [
    """CREATE OR REPLACE VIEW latest_tau AS
    WITH overall AS (
        SELECT * FROM acceptance_metrics WHERE domain = 'all' AND context_bucket = 'all' AND position IS NULL
    ), latest AS (
        SELECT base_model, drafter, benchmark, temperature, max(recorded_at) AS recorded_at
        FROM overall WHERE metric = 'tau' GROUP BY ALL
    )
    SELECT o.base_model, o.drafter, o.benchmark, o.temperature, o.recorded_at, any_value(o.draft_version) AS draft_version,
           max(o.value) FILTER (WHERE o.metric = 'tau') AS tau,
           max(o.value) FILTER (WHERE o.metric = 'speedup') AS speedup,
           max(o.value) FILTER (WHERE o.metric = 'tokens_per_s') AS tokens_per_s,
           max(o.value) FILTER (WHERE o.metric = 'draft_ms_per_round') AS draft_ms_per_round,
           max(o.value) FILTER (WHERE o.metric = 'verify_ms_per_round') AS verify_ms_per_round,
           max(o.n) FILTER (WHERE o.metric = 'tau') AS rounds
    FROM overall o JOIN latest l USING (base_model, drafter, benchmark, temperature, recorded_at)
    GROUP BY ALL ORDER BY o.base_model, tau DESC""",
    """CREATE OR REPLACE VIEW tau_over_time AS
    SELECT date_trunc('day', recorded_at) AS day, base_model, drafter, benchmark, domain, temperature,
           sum(value * n) / nullif(sum(n), 0) AS tau, sum(n) AS rounds, count(DISTINCT measurement_key) AS measurements
    FROM acceptance_metrics
    -- per-domain rows are pooled over context buckets (weighted by rounds); 'all' is the whole benchmark
    WHERE metric = 'tau' AND (domain <> 'all' OR context_bucket = 'all')
    GROUP BY ALL ORDER BY day, base_model, drafter, domain""",
    """CREATE OR REPLACE VIEW acceptance_curves AS
    WITH latest AS (
        SELECT base_model, drafter, benchmark, temperature, max(recorded_at) AS recorded_at
        FROM acceptance_metrics WHERE metric = 'tau' GROUP BY ALL
    )
    SELECT a.base_model, a.drafter, a.benchmark, a.temperature, a.recorded_at, a.metric, a.position, a.value, a.n
    FROM acceptance_metrics a JOIN latest l USING (base_model, drafter, benchmark, temperature, recorded_at)
    WHERE a.metric IN ('prefix_accept', 'cond_accept') AND a.domain = 'all' AND a.context_bucket = 'all'
    ORDER BY a.base_model, a.drafter, a.metric, a.position""",
]


def _with_schedule(view: str) -> str:
    """A version-1 view that also keys measurements by schedule and concurrency (fixed-length and scheduled
    verification of the same draft are different measurements)."""
    for old, new in (("benchmark, temperature", "benchmark, temperature, schedule, concurrency"),
                     ("o.temperature,", "o.temperature, o.schedule, o.concurrency,"),
                     ("a.temperature,", "a.temperature, a.schedule, a.concurrency,"),
                     ("benchmark, domain, temperature,", "benchmark, domain, temperature, schedule, concurrency,")):
        view = view.replace(old, new)
    return view


#: migration 3: what `benchmarks/bench_decoding.py` measured, long form, one row per (method, metric); a
#: benchmark run's rows (one process, one `run_id`) are written and replaced together
DECODING_BENCHMARK_COLUMNS = (
    ("recorded_at", "TIMESTAMPTZ NOT NULL"),
    ("run_id", "VARCHAR NOT NULL"),
    ("machine", "VARCHAR"),  # CPU/GPU model, core count, torch version and threads
    ("code_version", "VARCHAR"),
    ("git_commit", "VARCHAR"),
    ("target", "VARCHAR NOT NULL"),  # the target model's spec
    ("revision", "VARCHAR"),  # its snapshot revision
    ("device", "VARCHAR NOT NULL"),
    ("dtype", "VARCHAR"),
    ("suite", "VARCHAR"),  # where the prompts came from
    ("method", "VARCHAR NOT NULL"),  # ours-ar, hf-generate, hf-assisted, ours-prompt-lookup, a trained draft ...
    ("prompts", "INTEGER NOT NULL"),
    ("max_new_tokens", "INTEGER NOT NULL"),
    ("metric", "VARCHAR NOT NULL"),  # tokens_per_s, speedup_vs_ours_ar, tau, draft_ms_per_round, ...
    ("value", "DOUBLE"),
    ("n", "BIGINT"),  # generated tokens the value was measured on
)
_DECODING_BENCHMARKS = "CREATE TABLE IF NOT EXISTS decoding_benchmarks (\n  " + ",\n  ".join(
    f"{name} {kind}" for name, kind in DECODING_BENCHMARK_COLUMNS) + "\n)"

#: migration 4: τ and speed-up of every evaluation of a draft against what its line of drafts had trained (the
#: `cumulative_steps` / `cumulative_tokens` rows each evaluation of a trained draft records)
_TAU_BY_TRAINING = """CREATE OR REPLACE VIEW tau_by_training AS
    SELECT base_model, drafter, draft_version, benchmark, temperature, schedule, concurrency,
           min(recorded_at) AS recorded_at,
           max(value) FILTER (WHERE metric = 'cumulative_steps') AS cumulative_steps,
           max(value) FILTER (WHERE metric = 'cumulative_tokens') AS cumulative_tokens,
           max(value) FILTER (WHERE metric = 'tau') AS tau,
           max(value) FILTER (WHERE metric = 'speedup') AS speedup
    FROM acceptance_metrics
    WHERE domain = 'all' AND context_bucket = 'all' AND position IS NULL
    GROUP BY measurement_key, base_model, drafter, draft_version, benchmark, temperature, schedule, concurrency
    HAVING max(value) FILTER (WHERE metric = 'cumulative_steps') IS NOT NULL
    ORDER BY base_model, drafter, benchmark, cumulative_steps, recorded_at"""

#: (version, statements); append new migrations, never edit applied ones
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [_TABLE, "CREATE INDEX IF NOT EXISTS acceptance_measurement ON acceptance_metrics (measurement_key)", *_VIEWS]),
    (2, [*(f"ALTER TABLE acceptance_metrics ADD COLUMN IF NOT EXISTS {name} {kind}" for name, kind in _V2_COLUMNS),
         *(_with_schedule(view) for view in _VIEWS)]),
    (3, [_DECODING_BENCHMARKS]),
    (4, [_TAU_BY_TRAINING]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: the views as the latest migration defines them (a measurement log builds them on its in-memory tables)
VIEWS = [*(_with_schedule(view) for view in _VIEWS), _TAU_BY_TRAINING]
#: each table's columns and the column whose value a write replaces (a measurement, a benchmark run)
TABLES = {"acceptance_metrics": (ACCEPTANCE_COLUMNS, "measurement_key"),
          "decoding_benchmarks": (DECODING_BENCHMARK_COLUMNS, "run_id")}


def migrate(connection) -> int:
    """Apply the migrations this database has not seen yet; returns the schema version."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
    applied = {row[0] for row in connection.execute("SELECT version FROM schema_version").fetchall()}
    for version, statements in MIGRATIONS:
        if version in applied:
            continue
        connection.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                connection.execute(statement)
            connection.execute("INSERT INTO schema_version VALUES (?, now())", [version])
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
