"""The Dagster platform on the tiny model, with a real temporary Dagster instance, MLflow store and DuckDB
file: every asset, the jobs end to end, the checks (passing and planted failures), sensors, schedule,
idempotent metrics, concurrent writers, the draft registry and its CLI."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest
from safetensors.torch import load_file, save_file

from conftest import TINY, run_cli
from dspark_core.models.registry import register_model
from dspark_core.store import AcceptanceRow, MetricsStore
from pipelines.partitions import model_drafter_key
from pipelines.tracking import tau_tag

DATA = ["base_model", "prompt_dataset", "target_responses", "target_feature_cache"]
DRAFT = ["draft_checkpoint", "calibrated_draft", "exported_draft", "speculative_eval", "champion_draft"]
SMALL = {
    "prompt_dataset": {"validation_fraction": 0.3},
    "target_responses": {"max_new_tokens": 16, "batch_size": 8},
    "target_feature_cache": {"layer_ids": [1, 2], "max_length": 128},
    "draft_checkpoint": {"steps": 6, "draft_vocab_size": 256},
    "calibrated_draft": {"max_prompts": 4, "max_new_tokens": 8},
    "speculative_eval": {"max_prompts": 3, "max_new_tokens": 12},
    "champion_draft": {"min_speedup": 0.0},  # a tiny random model's draft pays off only by chance
    "draft_checkpoint_draft_greedy_lossless": {"prompts": 2, "max_new_tokens": 8},
    "transfer_report": {"max_prompts": 2, "max_new_tokens": 6},
}


class Platform:
    """One temporary Dagster instance + MLflow store + DuckDB file, and helpers to materialize on them."""

    def __init__(self, instance: dg.DagsterInstance, root: Path, prompts: Path):
        from pipelines.definitions import defs
        from pipelines.launchers import StageLauncher
        from pipelines.resources import MetricsDatabase, MLflowResource, TargetLoader

        self.defs, self.instance, self.root = defs, instance, root
        self.config = SMALL
        self.mlflow = MLflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment_name="test")
        self.metrics_db = MetricsDatabase(path=str(root / "metrics.duckdb"))
        self.resources = {"targets": TargetLoader(device="cpu", dtype="float32"), "mlflow": self.mlflow,
                          "metrics_db": self.metrics_db, "launcher": StageLauncher()}
        self.slug = register_model(TINY, prompts=str(prompts))  # the asset's default source is the registered one
        instance.add_dynamic_partitions("base_model", [self.slug])

    def run_config(self, names) -> dict:
        ops = {op: {"config": cfg} for op, cfg in self.config.items() if any(op.startswith(n) for n in names)}
        return {"ops": ops, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def materialize(self, selection: dg.AssetSelection, partition_key, names: list[str]) -> dg.ExecuteInProcessResult:
        return dg.materialize([*self.defs.assets, *self.defs.asset_checks], selection=selection,
                              partition_key=partition_key, instance=self.instance, resources=self.resources,
                              run_config=self.run_config(names), raise_on_error=False)

    def asset(self, name: str, partition_key) -> dg.ExecuteInProcessResult:
        return self.materialize(dg.AssetSelection.assets(name), partition_key, [name])

    def metadata(self, name: str, partition_key) -> dict:
        records = self.instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(name), asset_partitions=None if partition_key is None else [str(partition_key)]), limit=1)
        return {k: v.value for k, v in records.records[0].asset_materialization.metadata.items()}

    def key(self, drafter: str) -> dg.MultiPartitionKey:
        return model_drafter_key(self.slug, drafter)


def write_prompts(root: Path) -> Path:
    """Sixteen short prompts, one per topic, as a prompt source."""
    prompts = root / "prompts.jsonl"
    topics = ["rivers", "bread", "chess", "volcanoes", "jazz", "bees", "glass", "tides", "maps", "clocks",
              "salt", "kites", "owls", "copper", "fog", "ink"]
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me three facts about {t}.", "source": "facts"}) + "\n"
                               for t in topics))
    return prompts


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_target):
    root = tmp_path_factory.mktemp("platform")
    prompts = write_prompts(root)
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        yield Platform(instance, root, prompts)


@pytest.fixture(scope="module")
def materialized(platform):
    """Every asset materialized one at a time, in graph order, for the tiny model and the dspark drafter."""
    results = {}
    for name in DATA:
        results[name] = platform.asset(name, platform.slug)
    for name in DRAFT:
        results[name] = platform.asset(name, platform.key("dspark"))
    results["metrics_history"] = platform.asset("metrics_history", None)
    return results


def test_definitions_hold_the_whole_platform():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.path[0] for k in graph.get_all_asset_keys()} == {*DATA, *DRAFT, "metrics_history", "transfer_report"}
    assert {c.name for c in graph.asset_check_keys} == {
        "feature_cache_matches_base_model", "draft_weights_finite", "draft_greedy_lossless", "tau_within_margin_of_champion",
        "derived_models_keep_their_drafts_tau"}
    assert {s.name for s in defs.sensors} == {"new_base_model_sensor", "train_drafters_on_new_cache", "refresh_metrics_on_new_eval"}
    assert [s.name for s in defs.schedules] == ["weekly_retraining_schedule"]
    for job in ("prepare_base_model", "train_and_evaluate_draft", "refresh_metrics_history", "transfer_tests"):
        defs.resolve_job_def(job)


def test_every_asset_materializes_with_its_metadata(platform, materialized):
    for name, result in materialized.items():
        assert result.success, name
    meta = lambda name, key: platform.metadata(name, key)  # noqa: E731
    slug, key = platform.slug, platform.key("dspark")
    prompts = meta("prompt_dataset", slug)
    assert prompts["train_prompts"] + prompts["validation_prompts"] == 16 and prompts["source"].endswith("prompts.jsonl")
    assert meta("target_responses", slug)["response_tokens"] > 0
    cache = meta("target_feature_cache", slug)
    assert cache["samples"] == 16 and len(cache["layer_ids"]) == 2
    checkpoint = meta("draft_checkpoint", key)
    assert Path(checkpoint["path"]).is_dir() and checkpoint["steps"] == 6 and "data:image/png;base64," in checkpoint["loss_curve"]
    calibrated = meta("calibrated_draft", key)
    assert calibrated["calibrated"] is True and Path(calibrated["path"]).name == "calibrated"
    assert len(calibrated["temperatures"]) == 4 and "data:image/png;base64," in calibrated["reliability_diagrams"]
    export = meta("exported_draft", key)
    assert export["draft_version"].isdigit() and (Path(export["path"]) / "config.json").is_file()
    evaluation = meta("speculative_eval", key)
    assert evaluation["tau"] >= 1.0 and evaluation["greedy_identical"] is True and evaluation["duckdb_rows"] > 0
    assert meta("champion_draft", key)["evaluated_version"] == export["draft_version"]
    assert meta("champion_draft", key)["speedup"] == meta("speculative_eval", key)["speedup"]  # what the rule saw
    assert meta("metrics_history", None)["measurements"] >= 1
    # every check ran and passed
    checks = {e.check_name: e.passed for r in materialized.values() for e in r.get_asset_check_evaluations()}
    assert checks == {"feature_cache_matches_base_model": True, "draft_weights_finite": True,
                      "draft_greedy_lossless": True, "tau_within_margin_of_champion": True}
    # MLflow: a training run and an eval run tagged with their Dagster run, the version is champion
    tracking = platform.mlflow.tracking()
    runs = tracking.client.search_runs([tracking.experiment_id])
    mine = [r for r in runs if r.data.tags["dagster.partition"] == str(key)]
    assert {r.data.tags["dagster.asset"] for r in mine} >= {"draft_checkpoint", "speculative_eval"}
    assert all(r.data.tags["dagster.run_id"] for r in mine) and any("loss" in r.data.metrics for r in mine)
    assert tracking.champion(slug) is not None and isinstance(meta("champion_draft", key)["promoted"], bool)
    # DuckDB: long-form rows, per-position acceptance included
    columns, rows = platform.metrics_db.store().query(
        "SELECT metric, count(*) FROM acceptance_metrics WHERE drafter = 'dspark' GROUP BY metric")
    metrics = dict(rows)
    assert metrics["tau"] >= 2 and {"speedup", "tokens_per_s", "draft_ms_per_round", "verify_ms_per_round"} <= set(metrics)
    # and the calibration's ECE / AUROC / Brier per position, after and before
    _, rows = platform.metrics_db.store().query(
        "SELECT benchmark, metric, count(*) FROM acceptance_metrics WHERE benchmark LIKE 'calibration%' GROUP BY ALL")
    assert {(b, m) for b, m, _ in rows} >= {("calibration-affine:heldout-v1", "ece"),
                                            ("calibration-affine:heldout-v1", "brier"),
                                            ("calibration-affine:heldout-v1:uncalibrated", "ece")}


def test_full_graph_end_to_end_through_the_jobs(platform, materialized):
    """The three jobs in order, as the sensors chain them, for another drafter partition."""
    slug, key = platform.slug, platform.key("eagle3")
    prepare = platform.defs.resolve_job_def("prepare_base_model")
    train = platform.defs.resolve_job_def("train_and_evaluate_draft")
    refresh = platform.defs.resolve_job_def("refresh_metrics_history")
    config = lambda names: platform.run_config(names)  # noqa: E731
    assert prepare.execute_in_process(partition_key=slug, instance=platform.instance, resources=platform.resources,
                                      run_config=config(DATA)).success
    assert train.execute_in_process(partition_key=str(key), instance=platform.instance, resources=platform.resources,
                                    run_config=config(DRAFT)).success
    assert refresh.execute_in_process(instance=platform.instance, resources=platform.resources,
                                      run_config=config([])).success
    _, rows = platform.metrics_db.store().query("SELECT drafter FROM latest_tau WHERE base_model = ? ORDER BY 1", [slug])
    assert {"dspark", "eagle3"} <= {r[0] for r in rows}
    versions = {platform.metadata("exported_draft", platform.key(d))["draft_version"] for d in ("dspark", "eagle3")}
    assert len(versions) == 2  # another drafter's weights, another registered version


def test_make_run_completes_drafters_evaluated_before_the_latest_cache_before_a_new_cycle(platform, materialized):
    """The job above materialized the cache again and evaluated eagle3 after it; dspark's evaluation is older."""
    from pipelines.main import stale_drafters

    assert stale_drafters(platform.instance, platform.slug, ["dspark", "eagle3", "dflash"]) == ["dspark", "dflash"]


def test_rematerializing_does_not_duplicate_metrics(platform, materialized):
    store = platform.metrics_db.store()
    count = "SELECT count(*), count(DISTINCT measurement_key) FROM acceptance_metrics WHERE drafter = 'dspark'"
    before = store.query(count)[1][0]
    assert platform.asset("speculative_eval", platform.key("dspark")).success
    assert store.query(count)[1][0] == before
    # and exporting the same weights again reuses their registered version
    assert platform.asset("exported_draft", platform.key("dspark")).success
    assert platform.metadata("exported_draft", platform.key("dspark"))["draft_version"] == "1"


# --- checks: planted failures -----------------------------------------------------------------------------

def _report(platform, asset: str, partition, **metadata) -> None:
    platform.instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=str(partition), metadata=metadata))


def _check_passed(result, name: str) -> bool:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}[name]


def test_cache_check_fails_on_a_corrupt_shard_and_a_foreign_manifest(platform, materialized, tmp_path, tiny_target,
                                                                     monkeypatch):
    import assets.target_feature_cache as cache_asset
    from dspark_core.evaluation.checks import cache_problems
    from pipelines.sensors import train_drafters_on_new_cache

    cache = Path(platform.metadata("target_feature_cache", platform.slug)["path"])
    shard = next(cache.glob("*.safetensors"))
    original = shard.read_bytes()
    # bit rot before a build: the build verifies what it would reuse and builds that shard again
    shard.write_bytes(original[:-64] + bytes(64))
    result = platform.asset("target_feature_cache", platform.slug)
    assert result.success and platform.metadata("target_feature_cache", platform.slug)["rebuilt_shards"] == 1
    assert shard.read_bytes() == original
    cursor = str(platform.instance.fetch_materializations(dg.AssetKey("target_feature_cache"), limit=1).records[0].storage_id)
    built = cache_asset.build_cache

    def build_then_rot(*args, **kwargs):  # bit rot between the build and its check: the check must see it
        report = built(*args, **kwargs)
        shard.write_bytes(original[:-64] + bytes(64))
        return report

    monkeypatch.setattr(cache_asset, "build_cache", build_then_rot)
    try:
        result = platform.asset("target_feature_cache", platform.slug)
        assert not _check_passed(result, "feature_cache_matches_base_model") and not result.success
    finally:
        monkeypatch.setattr(cache_asset, "build_cache", built)
        shard.write_bytes(original)
    # the training sensor does not start drafts on a cache whose run failed its blocking check...
    context = dg.build_sensor_context(instance=platform.instance, cursor=cursor)
    assert list(train_drafters_on_new_cache(context)) == []
    assert _check_passed(platform.asset("target_feature_cache", platform.slug), "feature_cache_matches_base_model")
    # ...and does for the next one, which passed
    requests = list(train_drafters_on_new_cache(dg.build_sensor_context(instance=platform.instance, cursor=context.cursor)))
    assert len(requests) == 3
    foreign = tmp_path / "cache"
    shutil.copytree(cache, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["target_revision"], manifest["hidden_size"] = "0" * 40, 7
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    problems = cache_problems(foreign, tiny_target)
    assert len(problems) == 2 and "revision" in problems[0] and "hidden size" in problems[1]


def test_nan_weights_fail_the_blocking_check_and_stop_export(platform, materialized, tmp_path):
    key = platform.key("dflash")
    good = Path(platform.metadata("draft_checkpoint", platform.key("dspark"))["path"])
    bad = tmp_path / "draft"
    shutil.copytree(good, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(bad / "model.safetensors"))
    # a real training run id, so that without the blocking check the export itself would succeed
    _report(platform, "draft_checkpoint", key, path=str(bad),
            mlflow_run_id=platform.metadata("draft_checkpoint", platform.key("dspark"))["mlflow_run_id"])
    result = platform.materialize(
        dg.AssetSelection.assets("calibrated_draft", "exported_draft") | dg.AssetSelection.checks(
            dg.AssetCheckKey(dg.AssetKey("draft_checkpoint"), "draft_weights_finite")), key,
        ["calibrated_draft", "exported_draft"])
    assert not _check_passed(result, "draft_weights_finite")
    assert not result.success
    for asset in ("calibrated_draft", "exported_draft"):
        assert not platform.instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]), limit=1).records


def test_lossless_check_fails_with_a_broken_verifier(platform, materialized, monkeypatch):
    """A verifier that accepts every draft token changes the output; the check must notice."""
    import dspark_core.decoding.engine as engine
    from dspark_core.decoding.verification import VerifyResult

    def accept_everything(draft_tokens, lengths, target_logits):
        return VerifyResult(lengths.clone(), target_logits.argmax(-1).gather(1, lengths[:, None]).squeeze(1))

    key = platform.key("dflash")  # a partition not exported yet
    monkeypatch.setattr(engine, "verify_greedy", accept_everything)
    result = platform.materialize(dg.AssetSelection.assets("draft_checkpoint", "calibrated_draft", "exported_draft"),
                                  key, ["draft_checkpoint", "calibrated_draft", "exported_draft"])
    assert not _check_passed(result, "draft_greedy_lossless") and _check_passed(result, "draft_weights_finite")
    assert not platform.instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("exported_draft"), asset_partitions=[str(key)]), limit=1).records


def test_tau_check_blocks_promotion_below_the_champion(platform, materialized):
    key = platform.key("dspark")
    tracking = platform.mlflow.tracking()
    evaluation = platform.metadata("speculative_eval", key)
    champion_before = str(tracking.champion(platform.slug).version)
    run_id = platform.metadata("draft_checkpoint", key)["mlflow_run_id"]
    strong = tracking.register_draft(platform.slug, tracking.artifact_uri(run_id, "x"), run_id, {"drafter": "planted"})
    tracking.tag_version(platform.slug, strong, {tau_tag(evaluation["eval_id"]): str(evaluation["tau"] + 1.0)})
    tracking.promote(platform.slug, strong)
    select = dg.AssetSelection.assets("champion_draft") | dg.AssetSelection.checks(
        dg.AssetCheckKey(dg.AssetKey("speculative_eval"), "tau_within_margin_of_champion"))
    try:
        result = platform.materialize(select, key, [])
        assert not _check_passed(result, "tau_within_margin_of_champion")
        assert not result.asset_materializations_for_node("champion_draft")  # blocked, not merely outvoted
        assert str(tracking.champion(platform.slug).version) == strong
        assert tracking.rollback(platform.slug) == (strong, champion_before)
    finally:
        tracking.client.delete_model_version(f"dspark-draft-{platform.slug}", strong)
    assert str(tracking.champion(platform.slug).version) == champion_before


# --- sensors and schedule --------------------------------------------------------------------------------

def test_new_model_sensor_adds_partitions_and_requests_runs(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        check_new_model_sensor(instance, tmp_path)


def check_new_model_sensor(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    """On a fresh instance: every registered model becomes a partition and gets a run, once."""
    from pipelines.sensors import new_base_model_sensor

    first = register_model(TINY)
    result = new_base_model_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SensorResult)
    requested = {r.partition_key for r in result.run_requests}
    assert first in requested and {r.job_name for r in result.run_requests} <= {None, "prepare_base_model"}
    added = [k for request in result.dynamic_partitions_requests for k in request.partition_keys]
    assert sorted(added) == sorted(requested)
    instance.add_dynamic_partitions("base_model", added)
    assert isinstance(new_base_model_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    (tmp_path / "model.gguf").write_bytes(b"")  # registering needs a parsable spec, not an import
    second = register_model(str(tmp_path / "model.gguf"))
    result = new_base_model_sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in result.run_requests] == [second]


def test_cache_sensor_requests_one_training_run_per_drafter(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        check_cache_sensor(instance)


def check_cache_sensor(instance: dg.DagsterInstance) -> None:
    """A new feature cache of a model asks for one training run per drafter, once."""
    from pipelines.sensors import train_drafters_on_new_cache

    instance.add_dynamic_partitions("base_model", ["m1"])
    instance.report_runless_asset_event(dg.AssetMaterialization("target_feature_cache", partition="m1"))
    context = dg.build_sensor_context(instance=instance)
    assert list(train_drafters_on_new_cache(context)) == []  # first tick: what existed before does not count
    instance.report_runless_asset_event(dg.AssetMaterialization("target_feature_cache", partition="m1"))
    context = dg.build_sensor_context(instance=instance, cursor=context.cursor)
    requests = list(train_drafters_on_new_cache(context))
    assert sorted(str(r.partition_key) for r in requests) == ["m1|dflash", "m1|dspark", "m1|eagle3"]
    assert list(train_drafters_on_new_cache(dg.build_sensor_context(instance=instance, cursor=context.cursor))) == []


def test_weekly_schedule_requests_one_run_per_registered_model(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        check_weekly_schedule(instance)


def check_weekly_schedule(instance: dg.DagsterInstance) -> None:
    """The weekly tick asks each registered model's data to grow, one run per model."""
    from dspark_core.models.registry import registered_models
    from pipelines.schedules import weekly_retraining_schedule

    register_model(TINY)
    when = datetime(2026, 11, 30, 3, tzinfo=timezone.utc)
    assert isinstance(weekly_retraining_schedule(dg.build_schedule_context(instance, scheduled_execution_time=when)),
                      dg.SkipReason)
    instance.add_dynamic_partitions("base_model", list(registered_models()))
    requests = weekly_retraining_schedule(dg.build_schedule_context(instance, scheduled_execution_time=when))
    assert sorted(r.partition_key for r in requests) == sorted(registered_models())
    assert len({r.run_key for r in requests}) == len(requests)
    assert all(r.run_config["ops"]["prompt_dataset"]["config"]["grow"] is True for r in requests)
    from pipelines.definitions import defs
    dg.validate_run_config(defs.resolve_job_def("prepare_base_model"), requests[0].run_config)  # the job takes it


# --- metrics store, registry, CLI ------------------------------------------------------------------------

def _rows(key: str, count: int) -> list[AcceptanceRow]:
    now = datetime.now(timezone.utc)
    shared = AcceptanceRow(now, key, "run", None, "m", "rev", "dspark", None, None, "b", 0.0, 7, "test")
    return [replace(shared, metric="prefix_accept", position=k, value=0.5, n=10) for k in range(count)]


def _write_many(path: str, worker: int, writes: int) -> None:
    store = MetricsStore(path)
    for i in range(writes):
        store.replace_measurement(f"w{worker}-{i}", _rows(f"w{worker}-{i}", 5))


def test_concurrent_writer_processes_lose_no_rows(tmp_path):
    path = str(tmp_path / "metrics.duckdb")
    MetricsStore(path).ensure_schema()
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_write_many, args=(path, w, 8)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    _, rows = MetricsStore(path).query("SELECT count(*), count(DISTINCT measurement_key) FROM acceptance_metrics")
    assert rows == [(3 * 8 * 5, 3 * 8)]


def test_replacing_a_measurement_is_atomic_and_idempotent(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    store.replace_measurement("a", _rows("a", 4))
    store.replace_measurement("a", _rows("a", 3))
    store.replace_measurement("b", _rows("b", 2))
    assert store.query("SELECT measurement_key, count(*) FROM acceptance_metrics GROUP BY 1 ORDER BY 1")[1] == [("a", 3), ("b", 2)]
    broken = _rows("a", 3)
    broken[1] = replace(broken[1], base_model=None)  # violates NOT NULL after the delete and one insert
    with pytest.raises(Exception):
        store.replace_measurement("a", broken)
    assert store.query("SELECT count(*) FROM acceptance_metrics WHERE measurement_key = 'a'")[1] == [(3,)]
    with pytest.raises(Exception, match="measurement_key"):
        store.replace_measurement("a", _rows("a", 2) + _rows("wrong-key", 1))


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    """A metrics file written before schedules existed keeps its rows, which read as fixed-length, one request at
    a time, and the views key measurements by schedule from then on."""
    import duckdb

    from dspark_core.store.schema import MIGRATIONS

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
        for statement in MIGRATIONS[0][1]:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version VALUES (1, now())")
        v1_columns = [c for c in _rows("old", 1)[0].__dataclass_fields__ if c not in ("schedule", "concurrency")]
        row = {**_rows("old", 1)[0].__dict__, "metric": "tau", "position": None, "value": 1.5,
               "domain": "all", "context_bucket": "all"}
        connection.execute(f"INSERT INTO acceptance_metrics ({', '.join(v1_columns)}) VALUES "
                           f"({', '.join('?' for _ in v1_columns)})", [row[c] for c in v1_columns])
    store = MetricsStore(path)
    store.record([replace(r, metric="tau", position=None, value=1.8, schedule="scheduled") for r in _rows("new", 1)])
    _, rows = store.query("SELECT measurement_key, schedule, concurrency, value FROM acceptance_metrics ORDER BY 1")
    assert rows == [("new", "scheduled", 1, 1.8), ("old", "fixed", 1, 1.5)]
    _, latest = store.query("SELECT schedule, tau FROM latest_tau ORDER BY schedule")
    assert latest == [("fixed", 1.5), ("scheduled", 1.8)]


def test_rollback_moves_the_champion_alias_back(tmp_path):
    from pipelines.tracking import Tracking

    check_rollback(Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "rollback"))


def check_rollback(tracking) -> None:
    """Promotions stack; each rollback moves the champion alias one promotion back."""
    from dspark_core.errors import DsparkError

    with tracking.run("r", {}) as run_id:
        pass
    versions = [tracking.register_draft("m", tracking.artifact_uri(run_id, f"draft-{i}"), run_id, {}) for i in range(3)]
    with pytest.raises(DsparkError, match="no champion"):
        tracking.rollback("m")
    for version in versions:
        tracking.promote("m", version)
    assert tracking.rollback("m") == ("3", "2")
    assert tracking.rollback("m") == ("2", "1")
    with pytest.raises(DsparkError, match="nothing to roll back"):
        tracking.rollback("m")
    tracking.promote("m", "3")  # promoting again re-arms a rolled-back version
    assert tracking.rollback("m") == ("3", "1")


def test_cli_sql_and_drafts(platform, materialized, capsys, monkeypatch):
    db = str(platform.metrics_db.store().path)
    code, out, _ = run_cli(["sql", "SELECT drafter, round(tau, 2) AS tau FROM latest_tau", "--db", db], capsys)
    assert code == 0 and "dspark" in out and "row(s)" in out
    code, _, err = run_cli(["sql", "DELETE FROM acceptance_metrics", "--db", db], capsys)
    assert code == 2 and "read" in err
    uri = platform.mlflow.tracking_uri
    code, out, _ = run_cli(["drafts", "list", platform.slug, "--tracking-uri", uri], capsys)
    assert code == 0 and "★" in out
    code, _, err = run_cli(["drafts", "rollback", "no-such-model", "--tracking-uri", uri], capsys)
    assert code == 2 and "no champion" in err


def test_generate_decodes_with_the_champion(platform, materialized, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", platform.mlflow.tracking_uri)
    code, out, err = run_cli(["generate", "--target", TINY, "--drafter", "champion", "--prompt", "Tell me about owls.",
                              "--max-new-tokens", "12", "--compare", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert "exported_draft" in report["drafter"] and report["identical_to_autoregressive"] is True
    code, _, err = run_cli(["generate", "--target", TINY, "--drafter", "champion:never-registered", "--prompt", "x"], capsys)
    assert code == 2 and "no champion draft" in err


def test_a_rollback_sticks_until_promoted_by_hand(platform, materialized):
    key = platform.key("dspark")
    tracking = platform.mlflow.tracking()
    version = platform.metadata("exported_draft", key)["draft_version"]
    run_id = platform.metadata("draft_checkpoint", key)["mlflow_run_id"]
    earlier = tracking.register_draft(platform.slug, tracking.artifact_uri(run_id, "x"), run_id, {"drafter": "planted"})
    try:
        tracking.promote(platform.slug, earlier)
        tracking.promote(platform.slug, version)
        assert tracking.rollback(platform.slug) == (version, earlier)
        result = platform.materialize(dg.AssetSelection.assets("champion_draft"), key, [])
        assert result.success and platform.metadata("champion_draft", key)["promoted"] is False
        assert str(tracking.champion(platform.slug).version) == earlier  # the re-run did not undo the rollback
    finally:
        tracking.promote(platform.slug, version)  # by hand: re-arms it
        tracking.client.delete_model_version(f"dspark-draft-{platform.slug}", earlier)
    assert not tracking.is_rolled_back(platform.slug, version)


def test_transfer_report_evaluates_drafts_on_a_derived_base_model(platform, materialized, tiny_target):
    """The exported draft of the tiny model, evaluated on itself and on a re-quantized variant registered as a
    base model: the matrix, the retention row, the warning check and the retraining request agree."""
    from dspark_core.models.derive import DeriveConfig, derive_model
    from dspark_core.models.registry import registered_models

    derive_model(tiny_target, "tiny-platform-q2", DeriveConfig(bits=2), overwrite=True)
    derived = register_model("derived:tiny-platform-q2")
    result = platform.materialize(dg.AssetSelection.assets("transfer_report"), None, ["transfer_report"])
    # (other tests register models that cannot load, e.g. an empty .gguf file: their columns say so)
    assert result.success or not _check_passed(result, "derived_models_keep_their_drafts_tau")
    meta = platform.metadata("transfer_report", None)
    matrix = meta["transfer_matrix"]
    assert platform.slug in matrix and derived in matrix and f"{platform.slug} · dspark" in matrix
    assert f"| {platform.slug} · dspark | {platform.slug} | {derived} |" in meta["retention"]
    under = "| True |" in meta["retention"]
    assert (derived in meta["retraining_requested"]) == under
    assert ("retrain_requested" in registered_models()[derived]) == under
    assert _check_passed(result, "derived_models_keep_their_drafts_tau") == (not under)
    assert meta["duckdb_rows"] > 0 and meta["heat_map"]


def test_retraining_continues_from_the_champion_and_records_the_lineage(platform, materialized, capsys):
    """A second training run of a drafter whose draft is champion grows from it (warm_start 'auto'): the
    checkpoint, the MLflow run, the registered version and `dspark drafts list` say from which version."""
    key, tracking = platform.key("dspark"), platform.mlflow.tracking()
    champion = str(tracking.champion(platform.slug).version)
    first = platform.metadata("draft_checkpoint", key)
    platform.config = {**SMALL, "draft_checkpoint": {**SMALL["draft_checkpoint"], "steps": 4}}
    try:
        result = platform.materialize(dg.AssetSelection.assets("draft_checkpoint", "calibrated_draft", "exported_draft"),
                                      key, ["draft_checkpoint", "calibrated_draft", "exported_draft"])
    finally:
        platform.config = SMALL
    assert result.success
    second = platform.metadata("draft_checkpoint", key)
    assert second["path"] != first["path"] and second["parent_version"] == champion
    assert (first["generation"], second["generation"]) == (0, 1)
    assert second["cumulative_steps"] == first["cumulative_steps"] + 4 == 10
    run = tracking.client.get_run(second["mlflow_run_id"])
    assert run.data.tags["dspark.parent_version"] == champion and run.data.params["parent_version"] == champion
    exported = platform.metadata("exported_draft", key)
    assert exported["parent_version"] == champion and exported["draft_version"] != champion
    version = tracking.client.get_model_version(f"dspark-draft-{platform.slug}", exported["draft_version"])
    assert version.tags["dspark.parent_version"] == champion and version.tags["dspark.cumulative_steps"] == "10"
    assert f"continued from version {champion}" in version.description
    code, out, _ = run_cli(["drafts", "list", platform.slug, "--tracking-uri", platform.mlflow.tracking_uri], capsys)
    assert code == 0 and f"v{champion}" in out and "scratch" in out

    # the longitudinal view: each evaluated draft against the steps its line had trained
    assert platform.asset("speculative_eval", key).success and platform.asset("metrics_history", None).success
    columns, rows = platform.metrics_db.store().tau_by_training()
    mine = [dict(zip(columns, row)) for row in rows  # the registered versions (evaluations of other checkpoints aside)
            if row[0] == platform.slug and row[1] == "dspark" and row[2] is not None]
    assert [(r["draft_version"], r["cumulative_steps"]) for r in mine] == [(champion, 6), (exported["draft_version"], 10)]
    assert all(r["cumulative_tokens"] > 0 and r["tau"] >= 1.0 for r in mine)
    history = platform.metadata("metrics_history", None)
    assert "data:image/png;base64," in history["tau_over_training"] and "cumulative_steps" in history["tau_by_training"]


def test_a_derived_model_grows_its_first_draft_from_its_parents(platform, materialized, tiny_target):
    """A newly registered variant (same shapes) has no draft of its own: its first one continues from its
    parent model's champion, and says so."""
    from dspark_core.models.derive import DeriveConfig, derive_model

    derive_model(tiny_target, "tiny-platform-q4", DeriveConfig(bits=4), overwrite=True)
    derived = register_model("derived:tiny-platform-q4", prompts=str(platform.root / "prompts.jsonl"))
    platform.instance.add_dynamic_partitions("base_model", [derived])
    champion = str(platform.mlflow.tracking().champion(platform.slug).version)
    for name in DATA:
        assert platform.asset(name, derived).success, name
    key = model_drafter_key(derived, "dspark")
    assert platform.asset("draft_checkpoint", key).success
    grown = platform.metadata("draft_checkpoint", key)
    assert grown["parent_version"] == f"{platform.slug}:{champion}" and grown["generation"] >= 1
