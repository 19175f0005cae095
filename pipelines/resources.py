"""Typed resources: where targets run, the MLflow store, the metrics store (the launcher of heavy stages is in
launchers.py)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from dspark_core.device import DATA_DTYPE_HELP
from dspark_core.models import TargetModel, load_target
from dspark_core.store import MetricsStore, open_metrics_store
from pipelines.launchers import StageLauncher
from pipelines.tracking import Tracking


class TargetLoader(dg.ConfigurableResource):
    """Loads base models (from their imported snapshots) on the configured device."""

    device: str = Field(default="auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field(default="auto", description="'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16', ...")
    data_dtype: str = Field(default="auto", description=DATA_DTYPE_HELP)

    def load(self, spec: str) -> TargetModel:
        return load_target(spec, device=self.device, dtype=self.dtype)

    def load_for_data(self, spec: str) -> TargetModel:
        """The target as the data stages run it (`data_dtype`); decoding and training use `load`."""
        return load_target(spec, device=self.device, dtype=self.data_dtype, for_data=True)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry: one run per training/evaluation materialization, drafts
    registered per base model with a `champion` alias."""

    tracking_uri: str = Field(default="", description="MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else a SQLite store under $DSPARK_HOME/mlflow")
    experiment_name: str = Field(default="dspark", description="Experiment the runs are logged to")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="Where the MLflow UI is served (`make ui`), for run links")
    artifact_root: str = Field(default="", description="Where a new experiment keeps its artifacts (a directory, "
                                                       "file:// or s3:// URI); empty: $DSPARK_MLFLOW_ARTIFACT_ROOT, "
                                                       "else beside a SQLite store or under $DSPARK_HOME/mlflow for "
                                                       "a database store, else the tracking server's choice")

    def tracking(self) -> Tracking:
        return Tracking(self.tracking_uri or None, self.experiment_name, self.ui_url, self.artifact_root or None)


class MetricsDatabase(dg.ConfigurableResource):
    """Where acceptance_metrics and its views live: one DuckDB file (one machine, writers take turns), or a
    measurement-log directory of Parquet files (writers on many machines at once, e.g. on a shared disk)."""

    path: str = Field(default="", description="A DuckDB file (…/metrics.duckdb) or a measurement-log directory; "
                                              "empty: $DSPARK_METRICS, else $DSPARK_HOME/metrics.duckdb")
    lock_timeout_s: float = Field(default=120.0, description="How long a DuckDB-file writer waits for another "
                                                             "process's lock")

    def store(self) -> MetricsStore:
        return open_metrics_store(self.path or None, lock_timeout_s=self.lock_timeout_s)


def default_resources() -> dict:
    return {"targets": TargetLoader(), "mlflow": MLflowResource(), "metrics_db": MetricsDatabase(),
            "launcher": StageLauncher.from_environment()}
