"""The platform on production stores: Dagster's instance on a real PostgreSQL server, MLflow's tracking server with
its backend store on the same server, metrics in a measurement log — the whole asset graph on the tiny model, the
sensors and the schedule, the champion alias and rollback, and one-line errors for wrong settings."""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg
import pytest
from servers import MLflowServer, PostgresServer
from test_platform import DATA, DRAFT, Platform, check_cache_sensor, check_new_model_sensor, check_rollback, \
    check_weekly_schedule, write_prompts

from dspark_core.errors import DsparkError
from dspark_core.store import MeasurementLog
from pipelines.instance import POSTGRES_URL, dagster_home, write_instance_yaml


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    server = MLflowServer(postgres.create_database("mlflow"), tmp_path_factory.mktemp("mlflow-artifacts"))
    yield server
    server.close()


def postgres_instance(postgres, home, database: str, env: pytest.MonkeyPatch) -> dg.DagsterInstance:
    """A Dagster instance from the dagster.yaml dspark writes for PostgreSQL, on a database of its own (its URL set
    in the environment through `env`, which restores it: the yaml reads it whenever the instance connects)."""
    env.setenv(POSTGRES_URL, postgres.create_database(database))
    return dg.DagsterInstance.from_config(str(write_instance_yaml(home, postgres=True)))


@pytest.fixture(scope="module")
def cluster(postgres, mlflow_server, tmp_path_factory, tiny_target):
    from pipelines.resources import MetricsDatabase, MLflowResource

    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as env:
        instance = postgres_instance(postgres, root / "dagster", "dagster", env)
        platform = Platform(instance, root, write_prompts(root))
        platform.mlflow = MLflowResource(tracking_uri=mlflow_server.uri, experiment_name="cluster")
        platform.metrics_db = MetricsDatabase(path=str(root / "metrics-log"))
        platform.resources = {**platform.resources, "mlflow": platform.mlflow, "metrics_db": platform.metrics_db}
        yield platform
        instance.dispose()


def test_the_instance_keeps_runs_events_and_schedules_in_postgres_and_queues_runs_per_pool(cluster):
    from pipelines.jobs import ACCELERATOR, METRICS

    instance = cluster.instance
    assert [type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)] \
        == ["PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"]
    queue = instance.get_concurrency_config().run_queue_config
    limits = {(limit["key"], limit["value"]): limit["limit"] for limit in queue.tag_concurrency_limits}
    assert queue.max_concurrent_runs > 1
    assert limits == {next(iter(ACCELERATOR.items())): 1, next(iter(METRICS.items())): 1}
    for job, tags in (("prepare_base_model", ACCELERATOR), ("train_and_evaluate_draft", ACCELERATOR),
                      ("refresh_metrics_history", METRICS)):
        assert cluster.defs.resolve_job_def(job).tags.items() >= tags.items()


def test_the_whole_graph_runs_on_postgres_mlflow_server_and_a_measurement_log(cluster):
    slug, key = cluster.slug, cluster.key("dspark")
    results = [cluster.asset(name, slug) for name in DATA] + [cluster.asset(name, key) for name in DRAFT]
    results.append(cluster.asset("metrics_history", None))
    assert [r.success for r in results] == [True] * len(results)
    # what the runs wrote is in PostgreSQL: another instance on the same database sees it
    other = dg.DagsterInstance.from_config(str(cluster.instance.root_directory))
    try:
        assert other.get_run_by_id(results[-2].run_id).is_success
        assert cluster.metadata("speculative_eval", key)["tau"] > 0
    finally:
        other.dispose()
    tracking = cluster.mlflow.tracking()
    version = cluster.metadata("exported_draft", key)["draft_version"]
    assert str(tracking.champion(slug).version) == str(version)  # champion_draft's min_speedup is 0 here
    # the registered export's files went through the server into its artifact store
    source = tracking.client.get_model_version(f"dspark-draft-{slug}", str(version)).source
    assert tracking.client.list_artifacts(tracking.client.get_model_version(f"dspark-draft-{slug}", str(version)).run_id)
    assert source.startswith(("mlflow-artifacts:", "runs:/", "models:/")), source
    # a run continuing from it reads it from $DSPARK_HOME (storage a stage pod shares), downloaded once
    from dspark_core.paths import dspark_home

    registered = tracking.client.get_model_version(f"dspark-draft-{slug}", str(version))
    parent = tracking.local_path(registered)
    assert parent.is_relative_to(dspark_home() / "registry") and (parent / "config.json").exists()
    assert tracking.local_path(registered) == parent
    store = cluster.metrics_db.store()
    assert isinstance(store, MeasurementLog)
    _, rows = store.query("SELECT drafter, tau FROM latest_tau WHERE base_model = ?", [slug])
    assert [r[0] for r in rows] == ["dspark"] and rows[0][1] > 0


def test_rollback_moves_the_champion_alias_back_on_the_tracking_server(mlflow_server):
    from pipelines.tracking import Tracking

    check_rollback(Tracking(mlflow_server.uri, "rollback"))


def test_sensors_and_schedule_against_postgres(postgres, tmp_path, monkeypatch):
    for check, database in ((check_new_model_sensor, "sensor_models"), (check_cache_sensor, "sensor_cache"),
                            (check_weekly_schedule, "schedule")):
        instance = postgres_instance(postgres, tmp_path / database, database, monkeypatch)
        try:
            check(instance, tmp_path) if check is check_new_model_sensor else check(instance)
        finally:
            instance.dispose()


def test_wrong_postgres_and_mlflow_settings_are_one_line(postgres, tmp_path, monkeypatch):
    from pipelines.postgres import check_postgres
    from pipelines.tracking import Tracking

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cases = [
        (postgres.url().replace(str(postgres.port), "1"), "no PostgreSQL server answers at 127.0.0.1:1"),
        (postgres.url(password="wrong"), "refused user 'dspark' (password authentication failed"),
        (postgres.url("no_such_database"), "database 'no_such_database' does not exist"),
        ("mysql://x@127.0.0.1/db", "is not a PostgreSQL URL"),
    ]
    for url, expected in cases:
        monkeypatch.setenv(POSTGRES_URL, url)
        with pytest.raises(DsparkError, match="^" + POSTGRES_URL) as error:
            dagster_home()
        message = str(error.value)
        assert expected in message and "\n" not in message and "wrong" not in message.split(" (")[0]
        if url.startswith("postgresql"):
            with pytest.raises(DsparkError, match=r"^MLFLOW_TRACKING_URI .*" + expected.split(" (")[0]):
                Tracking(url.replace("/postgres", "/mlflow"))
    assert "***" in str(error.value) or "mysql" in str(error.value)
    with pytest.raises(DsparkError, match="no MLflow tracking server answers there"):
        Tracking("http://127.0.0.1:1")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(DsparkError, match=r"^DSPARK_MLFLOW_ARTIFACT_ROOT=.*a-file/artifacts: the MLflow artifact root "
                                          r"cannot be written"):
        Tracking(f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(a_file / "artifacts"))
    check_postgres(postgres.url(), POSTGRES_URL)  # the right one passes


def test_training_launched_through_pipes_under_torchrun_reports_back(cluster):
    """The training asset with its stage in a child process of 2 ranks (torchrun, gloo): the per-step losses and
    the child's metadata reach the materialization, and the draft is registered and evaluated as ever."""
    from pipelines.launchers import StageLauncher

    key = cluster.key("dspark")
    launcher = StageLauncher(mode="subprocess", nproc=2, report_every=1)
    config = cluster.run_config(["draft_checkpoint"])
    config["ops"]["draft_checkpoint"]["config"] = {**config["ops"]["draft_checkpoint"]["config"], "steps": 20,
                                                   "continue_from": "none"}
    result = dg.materialize([*cluster.defs.assets, *cluster.defs.asset_checks],
                            selection=dg.AssetSelection.assets("draft_checkpoint"), partition_key=key,
                            instance=cluster.instance, resources={**cluster.resources, "launcher": launcher},
                            run_config=config, raise_on_error=False)
    assert result.success
    meta = cluster.metadata("draft_checkpoint", key)
    assert meta["ranks"] == 2 and meta["launcher"] == "subprocess, 2 rank(s)" and meta["steps"] == 20
    assert [point["step"] for point in meta["loss_by_step"]] == [10, 20]  # the trainer logs every 10 steps
    assert all(point["loss"] > 0 for point in meta["loss_by_step"]) and meta["reported_steps"] == 2
    assert meta["final_loss"] == pytest.approx(meta["loss_by_step"][-1]["loss"], rel=1e-6)
    run = cluster.mlflow.tracking().client.get_run(meta["mlflow_run_id"])
    assert run.data.params["steps"] == "20" and run.info.status == "FINISHED"


def test_the_feature_cache_launched_through_pipes_reports_back(cluster):
    """The cache asset through the same launcher (one child process: the tiny cache is one shard, and every rank
    needs one): it verifies and reuses the cache the graph built, and says so."""
    from pipelines.launchers import StageLauncher

    result = dg.materialize([*cluster.defs.assets, *cluster.defs.asset_checks],
                            selection=dg.AssetSelection.assets("target_feature_cache"), partition_key=cluster.slug,
                            instance=cluster.instance,
                            resources={**cluster.resources, "launcher": StageLauncher(mode="subprocess")},
                            run_config=cluster.run_config(["target_feature_cache"]), raise_on_error=False)
    assert result.success
    meta = cluster.metadata("target_feature_cache", cluster.slug)
    assert meta["ranks"] == 1 and meta["launcher"] == "subprocess, 1 rank(s)" and meta["reused"] is True
    assert meta["samples"] > 0 and meta["path"]


def test_postgres_stopped_mid_run_fails_in_one_line_and_a_rerun_after_restart_completes(cluster, postgres, monkeypatch):
    """The server stops while the feature cache is being built (fault injected just before the build): the stage
    cannot record its result, `make run`'s stage runner says so in one line; after a restart the same stage
    completes, reusing the cache that was written whole during the outage."""
    import dagster_postgres.utils

    import assets.target_feature_cache as cache_asset
    from pipelines.main import _run_stage
    from test_platform import SMALL

    real = cache_asset.build_cache

    def stop_the_server_then_build(*args, **kwargs):
        postgres.stop("fast")
        return real(*args, **kwargs)

    # other layers: a cache of its own, built during the outage
    config = {"ops": {"target_feature_cache": {"config": {**SMALL["target_feature_cache"], "layer_ids": [1, 3]}}}}
    # the platform's definitions with the cluster's resources (the tiny model on CPU, the tracking server)
    defs = SimpleNamespace(assets=cluster.defs.assets, asset_checks=cluster.defs.asset_checks, resources=cluster.resources)
    monkeypatch.setenv(POSTGRES_URL, postgres.url("dagster"))
    monkeypatch.setattr(cache_asset, "build_cache", stop_the_server_then_build)
    # dagster-postgres retries every write 5 times with exponential backoff (~6 s each); the outage here is certain,
    # so its waits are cut short to keep the test fast (the retries still happen)
    monkeypatch.setattr(dagster_postgres.utils, "calculate_delay", lambda **_: 0.01)
    try:
        with pytest.raises(DsparkError) as error:
            _run_stage(defs, cluster.instance, ["target_feature_cache"], cluster.slug, "the cache", config)
    finally:
        postgres.start()
    message = str(error.value)
    assert message.startswith(f"the Dagster instance's database ({POSTGRES_URL}=postgresql://dspark:***@") and \
        "stopped answering during the cache" in message and "run the same command" in message and "\n" not in message
    monkeypatch.setattr(cache_asset, "build_cache", real)
    assert _run_stage(defs, cluster.instance, ["target_feature_cache"], cluster.slug, "the cache", config) == (True, True)
    rerun = cluster.metadata("target_feature_cache", cluster.slug)
    assert rerun["reused"] is True and rerun["layer_ids"] == [1, 3]  # written whole during the outage
