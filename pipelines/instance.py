"""The Dagster instance directory ($DAGSTER_HOME) and its dagster.yaml.

Three ways, first match wins:

* `$DAGSTER_HOME` set: that directory, with whatever dagster.yaml it holds (if it has none, dspark's is written:
  the PostgreSQL one when $DSPARK_DAGSTER_POSTGRES_URL is set);
* `$DSPARK_DAGSTER_POSTGRES_URL` set: `$DSPARK_HOME/dagster-postgres`, whose dagster.yaml keeps runs, event logs and
  schedules in that PostgreSQL database and lets several runs go at once, limited per pool by run tags;
* otherwise `$DSPARK_HOME/dagster`: Dagster's embedded SQLite storage, one run at a time (`make run`'s default).

`python -m pipelines.instance` prints the directory (creating it if needed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dspark_core.paths import dspark_home

POSTGRES_URL = "DSPARK_DAGSTER_POSTGRES_URL"
#: the run tag the queued run coordinator limits; jobs set it (pipelines/jobs.py)
POOL_TAG = "dspark/pool"

DAGSTER_YAML = """\
# Written once by dspark (pipelines/instance.py); edit freely, it is never overwritten.
concurrency:
  runs:
    # 2 CPU cores: two PyTorch runs at once slow each other down more than tenfold. Raise on a GPU machine.
    max_concurrent_runs: 1
  pools:
    # Pools in use: dspark_training (draft training), metrics_db (DuckDB writers). One slot each.
    default_limit: 1
telemetry:
  enabled: false
"""

DAGSTER_POSTGRES_YAML = f"""\
# Written once by dspark (pipelines/instance.py); edit freely, it is never overwritten.
# Runs, event logs and schedules in PostgreSQL: the webserver, the daemon and every run process, on any machine,
# share one instance.
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_URL}
concurrency:
  runs:
    # the queued run coordinator starts up to this many runs at once...
    max_concurrent_runs: 8
    # ...and at most `limit` runs per pool tag: "accelerator" runs load a base model or train a draft (one per
    # accelerator machine: raise to your GPU count), "metrics" runs rebuild the metrics history.
    tag_concurrency_limits:
      - key: {POOL_TAG}
        value: accelerator
        limit: 1
      - key: {POOL_TAG}
        value: metrics
        limit: 1
  pools:
    # op-level pools in use: dspark_training (draft training), metrics_db (DuckDB-file writers)
    default_limit: 1
telemetry:
  enabled: false
"""


def write_instance_yaml(home: Path, *, postgres: bool) -> Path:
    """Create `home` with the dspark dagster.yaml (PostgreSQL storage or embedded), unless it holds one already."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".dagster.yaml.", suffix=".tmp")  # one per concurrent writer
        with os.fdopen(fd, "w") as handle:
            handle.write(DAGSTER_POSTGRES_YAML if postgres else DAGSTER_YAML)
        os.replace(tmp, config)
    return home


def dagster_home() -> Path:
    """The instance directory (see the module docstring), created with a dagster.yaml on first use. With
    $DSPARK_DAGSTER_POSTGRES_URL set, the database is checked first: a wrong URL is one line naming the fix."""
    postgres_url = os.environ.get(POSTGRES_URL)
    if postgres_url:
        from pipelines.postgres import check_postgres

        check_postgres(postgres_url, POSTGRES_URL)
    if os.environ.get("DAGSTER_HOME"):
        return write_instance_yaml(Path(os.environ["DAGSTER_HOME"]).expanduser().resolve(), postgres=bool(postgres_url))
    if postgres_url:
        return write_instance_yaml((dspark_home() / "dagster-postgres").resolve(), postgres=True)
    return write_instance_yaml((dspark_home() / "dagster").resolve(), postgres=False)


def use_dagster_home() -> Path:
    """Point this process (and its children) at the platform's Dagster instance."""
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


if __name__ == "__main__":
    print(dagster_home())
