"""The Dagster instance directory: $DAGSTER_HOME, by default $DSPARK_HOME/dagster, so runs, partitions and
sensor cursors survive restarts. `python -m pipelines.instance` prints it (creating it if needed)."""

from __future__ import annotations

import os
from pathlib import Path

from dspark_core.paths import dspark_home

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


def dagster_home() -> Path:
    """$DAGSTER_HOME if set, else $DSPARK_HOME/dagster; created with a dagster.yaml on first use."""
    home = Path(os.environ.get("DAGSTER_HOME") or dspark_home() / "dagster").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        tmp = config.with_suffix(".yaml.tmp")
        tmp.write_text(DAGSTER_YAML)
        tmp.replace(config)
    return home


def use_dagster_home() -> Path:
    """Point this process (and its children) at the platform's Dagster instance."""
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


if __name__ == "__main__":
    print(dagster_home())
