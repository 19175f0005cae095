"""MLflow tracking and the draft model registry, in plain MLflow (the Dagster resource and `dspark drafts`
both use this; dspark_core never imports mlflow).

Default store: SQLite + artifact directory under $DSPARK_HOME/mlflow. Trained drafts are registered as
versions of one registered model per base model (`dspark-draft-<base model key>`); the `champion` alias
marks the version serving and evaluation use. Each promotion stamps the version with `dspark.promoted_at`,
so a rollback can move the alias back to the previously promoted version.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dspark_core.errors import DsparkError
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home
from dspark_core.recipes.champion import Champion, Contender

CHAMPION = "champion"
PROMOTED_AT = "dspark.promoted_at"
ROLLED_BACK = "dspark.rolled_back"
WEIGHTS_SHA = "dspark.weights_sha256"  # identical weights are registered once
TAU_TAG = "dspark.tau"  # τ of the version's latest evaluation (for display)
EVAL_TAG = "dspark.eval"  # how that τ was measured (benchmark, temperature, prompts)
#: "nothing there" answers of the registry; anything else (a locked database, a server error) is raised
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
MAX_PARAM_CHARS = 6000


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set (MLflow's own convention), else the SQLite store under $DSPARK_HOME."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    directory = dspark_home() / "mlflow"
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'mlflow.db'}"


def default_artifact_root() -> Path:
    return dspark_home() / "mlflow" / "artifacts"


ARTIFACT_ROOT = "DSPARK_MLFLOW_ARTIFACT_ROOT"
#: tracking URIs of a database store without a server (MLflow's SQLAlchemy store); sqlite is handled on its own
DATABASE_SCHEMES = {"postgresql", "postgres", "mysql", "mssql", "oracle"}


def check_tracking_store(uri: str, setting: str = "MLFLOW_TRACKING_URI") -> None:
    """Reach the store behind `uri` once, so a wrong setting is one line naming it and the fix: a PostgreSQL
    backend store is connected to; a tracking server must answer its /health endpoint."""
    from pipelines.postgres import check_postgres, is_postgres_url, masked

    if is_postgres_url(uri):
        check_postgres(uri, setting)
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        # an API call, not /health: a server answers /health to any host but refuses API calls from host names it
        # was not told to allow (MLflow >= 3.5, --allowed-hosts)
        probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        try:
            with urllib.request.urlopen(probe, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # the API answered: no experiment of that name
                return
            if exc.code == 403:
                raise DsparkError(f"{setting}={masked(uri)}: the MLflow server refused this host name (HTTP 403); "
                                  f"start it with --allowed-hosts naming the host and port clients use") from None
            raise DsparkError(f"{setting}={masked(uri)}: the MLflow server answered HTTP {exc.code} ({exc.reason}); "
                              f"check that the URL is the tracking server's") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DsparkError(f"{setting}={masked(uri)}: no MLflow tracking server answers there ({reason}); start it "
                              f"(mlflow server --backend-store-uri ... --host ... --port ...) or fix the URL") from None


def check_artifact_root(root: str, setting: str = ARTIFACT_ROOT) -> str:
    """A local artifact root (a path or file:// URI) must be writable; returns it as a URI. Remote roots (s3://,
    gs://, ...) are the server's or the cloud's to check."""
    if "://" in root and not root.startswith("file://"):
        return root
    path = Path(root.removeprefix("file://")).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".dspark-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DsparkError(f"{setting}={root}: the MLflow artifact root cannot be written ({exc.strerror}); point it "
                          f"at a directory this process may write (or a bucket the tracking server serves)") from None
    return path.resolve().as_uri()


def registered_model_name(base_model: str) -> str:
    return f"dspark-draft-{base_model}"


@dataclass(frozen=True)
class Lineage:
    """Where a registered draft came from: the version it grew from (None: from scratch or unregistered), the
    version tags saying so, and a sentence for the version's description."""

    parent_version: str | None
    tags: dict[str, str]
    description: str


def version_label(base_model: str, owner: str, version: str) -> str:
    """How a draft of `base_model` names a version of `owner`'s drafts: "3", or "parent-model:3" across models."""
    return version if owner == base_model else f"{owner}:{version}"


def tau_tag(eval_id: str) -> str:
    """The tag holding τ measured one particular way: comparisons only ever use τ measured alike."""
    return f"{TAU_TAG}.{hashlib.sha256(eval_id.encode()).hexdigest()[:12]}"


def _missing(exc) -> bool:
    return getattr(exc, "error_code", None) in _MISSING


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> flat `a.b` keys with string values (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


class Tracking:
    """One MLflow tracking/registry store and experiment."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "dspark", ui_url: str | None = None,
                 artifact_root: str | None = None):
        from mlflow import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        check_tracking_store(self.uri, "MLFLOW_TRACKING_URI (or the mlflow resource's tracking_uri)")
        # where a new experiment keeps its artifacts: as configured; beside a SQLite store; under $DSPARK_HOME for
        # another database store (MLflow's own default is ./mlruns of whatever directory the process runs in);
        # a tracking server's own choice for http(s)://
        artifact_root = artifact_root or os.environ.get(ARTIFACT_ROOT)
        if artifact_root:
            self.artifact_root: str | None = check_artifact_root(artifact_root)
        elif self.uri.startswith("sqlite:///"):
            self.artifact_root = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        elif self.uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
            self.artifact_root = check_artifact_root(str(default_artifact_root()))
        else:
            self.artifact_root = None
        self.experiment_name = experiment
        self.ui_url = (ui_url or "").rstrip("/")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._experiment_id: str | None = None

    # -- runs -----------------------------------------------------------------------------------------
    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self.client.create_experiment(self.experiment_name,
                                                                    artifact_location=self.artifact_root)
        return self._experiment_id

    @contextmanager
    def run(self, name: str, tags: dict[str, str]) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED if the body raises; yields its id."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(flat.items())])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()
                                               if isinstance(v, (int, float))])

    def log_history(self, run_id: str, history: list[dict], step_key: str = "step") -> None:
        """Per-step metrics (e.g. a training metrics.jsonl), in batches MLflow accepts."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, int(entry[step_key])) for entry in history
                   for k, v in entry.items() if k != step_key and isinstance(v, (int, float))]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])

    def log_artifacts(self, run_id: str, local: Path, artifact_path: str | None = None) -> None:
        if Path(local).is_dir():
            self.client.log_artifacts(run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(run_id, str(local), artifact_path)

    def artifact_uri(self, run_id: str, artifact_path: str) -> str:
        return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def run_url(self, run_id: str) -> str | None:
        if not self.ui_url:
            return None
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"

    # -- registry -------------------------------------------------------------------------------------
    def register_draft(self, base_model: str, source_uri: str, run_id: str, tags: dict[str, str]) -> str:
        """A new model version of the base model's registered draft model; returns its version number."""
        from mlflow.exceptions import MlflowException

        name = registered_model_name(base_model)
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            self.client.create_registered_model(
                name, tags={"base_model": base_model},
                description=f"Speculative-decoding draft modules for base model {base_model}. "
                            f"The '{CHAMPION}' alias marks the version that serving and evaluation use.")
        return str(self.client.create_model_version(name, source_uri, run_id=run_id, tags=tags).version)

    def register_export(self, base_model: str, export_dir: Path, training_run: str, weights_sha256: str,
                        tags: dict[str, str]) -> tuple[str, bool]:
        """Attach an exported draft to its training run and register it as a version of the base model's draft
        model; weights registered before reuse their version. Returns (version, reused)."""
        existing = [v for v in self.versions(base_model) if v.tags.get(WEIGHTS_SHA) == weights_sha256]
        if existing:
            return str(existing[-1].version), True
        artifact_path = f"exported_draft_{Path(export_dir).name}"
        self.log_artifacts(training_run, Path(export_dir), artifact_path)
        version = self.register_draft(base_model, self.artifact_uri(training_run, artifact_path), training_run,
                                      {**tags, WEIGHTS_SHA: weights_sha256})
        return version, False

    def versions(self, base_model: str) -> list:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{registered_model_name(base_model)}'")
        except MlflowException as exc:
            if not _missing(exc):
                raise
            return []
        return sorted(found, key=lambda v: int(v.version))

    def tag_version(self, base_model: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(registered_model_name(base_model), version, key, value)

    def champion(self, base_model: str):
        """The champion model version, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(registered_model_name(base_model), CHAMPION)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            return None

    def champion_measured_like(self, base_model: str, eval_id: str) -> Champion | None:
        """The champion, with its τ measured the way `eval_id` says (None when it never was)."""
        version = self.champion(base_model)
        if version is None:
            return None
        tau = version.tags.get(tau_tag(eval_id))
        return Champion(str(version.version), None if tau is None else float(tau))

    def contender(self, base_model: str, evaluation: dict) -> Contender:
        """The evaluated version as the champion rule sees it, from `speculative_eval`'s metadata."""
        version = str(evaluation["draft_version"])
        speedup = evaluation.get("speedup")
        return Contender(version, float(evaluation["tau"]), rolled_back=self.is_rolled_back(base_model, version),
                         speedup=None if speedup is None else float(speedup))

    def record_tau(self, base_model: str, version: str, eval_id: str, tau: float) -> None:
        """Stamp a version with τ measured one way (for comparisons) and as its latest τ (for display)."""
        self.tag_version(base_model, version, {tau_tag(eval_id): f"{tau:.6f}", TAU_TAG: f"{tau:.6f}", EVAL_TAG: eval_id})

    def is_rolled_back(self, base_model: str, version: str) -> bool:
        return ROLLED_BACK in self.client.get_model_version(registered_model_name(base_model), version).tags

    def promote(self, base_model: str, version: str) -> None:
        """Make `version` champion (by hand this also re-arms a rolled-back version)."""
        name = registered_model_name(base_model)
        self.client.set_model_version_tag(name, version, PROMOTED_AT, str(time.time_ns()))
        if ROLLED_BACK in self.client.get_model_version(name, version).tags:  # promoted again on purpose
            self.client.delete_model_version_tag(name, version, ROLLED_BACK)
        self.client.set_registered_model_alias(name, CHAMPION, version)

    def rollback(self, base_model: str) -> tuple[str, str]:
        """Move the champion alias back to the version promoted before the current one; returns (from, to)."""
        name = registered_model_name(base_model)
        current = self.champion(base_model)
        if current is None:
            raise DsparkError(f"base model {base_model!r} has no champion draft to roll back "
                              f"(registered model {name!r}); train and promote one first")
        promoted_at = lambda v: int(v.tags.get(PROMOTED_AT, 0))  # noqa: E731
        earlier = [v for v in self.versions(base_model)
                   if PROMOTED_AT in v.tags and ROLLED_BACK not in v.tags and v.version != current.version
                   and promoted_at(v) < promoted_at(current)]
        if not earlier:
            raise DsparkError(f"version {current.version} is the first champion of {name!r}; there is nothing to roll back to")
        previous = max(earlier, key=promoted_at)
        self.client.set_model_version_tag(name, current.version, ROLLED_BACK, "true")
        self.client.set_registered_model_alias(name, CHAMPION, previous.version)
        return str(current.version), str(previous.version)

    def warm_start_version(self, base_model: str, drafter: str):
        """The version a new `drafter` draft for `base_model` continues from: the champion when it is that
        drafter, else the drafter's newest registered version that was not rolled back; None when there is none."""
        champion = self.champion(base_model)
        if champion is not None and champion.tags.get("drafter") == drafter:
            return champion
        mine = [v for v in self.versions(base_model) if v.tags.get("drafter") == drafter and ROLLED_BACK not in v.tags]
        return mine[-1] if mine else None

    def version_with_weights(self, base_model: str, weights_sha256: str) -> str | None:
        """The registered version holding exactly these weights, if any."""
        found = [v for v in self.versions(base_model) if v.tags.get(WEIGHTS_SHA) == weights_sha256]
        return str(found[-1].version) if found else None

    def lineage(self, base_model: str, training: dict) -> "Lineage":
        """A draft's lineage as the registry records it, from its checkpoint's `training` config: the registered
        version it grew from (looked up by its weights; across base models "model:version"), its generation and
        its line's totals."""
        parent = training.get("parent") or {}
        parent_version = None
        if parent:  # the parent may be a draft of another base model (this one's parent model)
            owner = slugify(parent.get("target") or base_model)
            found = self.version_with_weights(owner, parent["weights_sha256"])
            parent_version = version_label(base_model, owner, found) if found else None
        generation = int(training.get("generation", 0))
        steps = training.get("cumulative_steps", training.get("steps_done", ""))
        tags = {"dspark.parent_version": parent_version or "none", "dspark.generation": str(generation),
                "dspark.cumulative_steps": str(steps), "dspark.cumulative_tokens": str(training.get("cumulative_tokens", ""))}
        origin = (f"continued from version {parent_version}." if parent_version else
                  f"continued from {parent['path']}." if parent else "trained from scratch.")
        return Lineage(parent_version, tags, f"generation {generation}, {steps} training steps over its line; {origin}")

    def describe_version(self, base_model: str, version: str, description: str) -> None:
        self.client.update_model_version(registered_model_name(base_model), version, description=description)

    def local_path(self, version) -> Path:
        """A directory holding the version's exported draft: where a local store keeps it, else downloaded under
        $DSPARK_HOME/registry (storage a stage launched in another pod shares, unlike a temporary directory)."""
        import mlflow.artifacts

        if self.uri.startswith(("http://", "https://")):
            destination = dspark_home() / "registry" / f"{version.name}-v{version.version}"
            if not (destination / ".complete").exists():
                destination.mkdir(parents=True, exist_ok=True)
                path = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=self.uri,
                                                                dst_path=str(destination)))
                (destination / ".complete").write_text(str(path.relative_to(destination)))
            return destination / (destination / ".complete").read_text()
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=self.uri))
