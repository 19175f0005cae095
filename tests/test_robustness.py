"""Ways of using the tool that used to give a wrong result without an error (each test failed before its fix):
a SQL console that could write files, dataset names sharing a folder, two regenerations at once, answers to
prompts a dataset no longer has, a resumed sampled regeneration that differed from an uninterrupted one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest
from conftest import run_cli

from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, regenerate_responses
from dspark_core.errors import DsparkError

SAMPLED = RegenerationConfig(max_new_tokens=8, batch_size=2, temperature=1.0, top_k=20)


@pytest.fixture()
def metrics_db(tmp_path) -> Path:
    path = tmp_path / "metrics.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE notes AS SELECT 'a[/]b' AS text, 1 AS n UNION ALL SELECT '[bold]x', 2")
    return path


@pytest.mark.parametrize("query", [
    "COPY (SELECT 42) TO '{tmp}/written.csv'",
    "EXPORT DATABASE '{tmp}/exported'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SET enable_external_access = true",
    "ATTACH '{tmp}/other.duckdb'",
])
def test_sql_console_cannot_touch_files_or_its_settings(capsys, metrics_db, tmp_path, query):
    code, _, err = run_cli(["sql", query.format(tmp=tmp_path), "--db", str(metrics_db)], capsys)
    assert code == 2 and "read-only, without file access" in err and "Traceback" not in err
    assert not (tmp_path / "written.csv").exists() and not (tmp_path / "exported").exists()
    assert not (tmp_path / "other.duckdb").exists()


def test_sql_values_are_printed_as_text_and_bad_input_is_one_line(capsys, metrics_db):
    code, out, err = run_cli(["sql", "SELECT text FROM notes ORDER BY n", "--db", str(metrics_db)], capsys)
    assert code == 0, err
    assert "a[/]b" in out and "[bold]x" in out
    code, _, err = run_cli(["sql", "  ", "--db", str(metrics_db)], capsys)
    assert code == 2 and "query is empty" in err
    code, _, err = run_cli(["sql", "SELECT 1", "--db", str(metrics_db), "--max-rows", "-1"], capsys)
    assert code == 2 and "--max-rows" in err


@pytest.mark.parametrize("name", ["My Data", "my/data", "", ".", "..", "-", "Data"])
def test_dataset_names_that_would_share_a_folder_are_refused(capsys, tmp_path, name):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"prompt": "hello there"}) + "\n")
    code, _, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", name], capsys)
    assert code == 2 and "is not usable as a folder name" in err and "Traceback" not in err


def test_distinct_dataset_names_keep_distinct_folders(capsys, tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"prompt": "hello there"}) + "\n")
    for name in ("my-data", "my_data", "my.data"):
        code, _, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", name], capsys)
        assert code == 0, err
        assert (Path(os.environ["DSPARK_HOME"]) / "data" / name / "prompts.jsonl").is_file()


def _prompts(*topics: str) -> list[tuple[PromptRecord, str]]:
    return [(PromptRecord.create([("user", f"Tell me about {t}.")], "t"), "train") for t in topics]


def _ids(path: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for line in (path / "responses.jsonl").read_text().splitlines())


def test_a_refused_writer_is_told_who_holds_the_directory(tmp_path):
    import subprocess
    import sys

    from dspark_core.paths import exclusive_writer

    held = tmp_path / "responses"
    holder = subprocess.Popen([sys.executable, "-c", f"from dspark_core.paths import exclusive_writer; import time\n"
                               f"with exclusive_writer({str(held)!r}, 'regenerating'):\n"
                               f"    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DsparkError, match=rf"another process \(pid {holder.pid}, `-c`, since .*\) is exporting in"):
            with exclusive_writer(held, "exporting"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_writer(held, "exporting"):  # released when its holder died; nothing stale is left to name
        assert json.loads((tmp_path / ".responses.holder.json").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".responses.holder.json").exists()


def test_a_second_writer_of_a_dataset_or_run_directory_is_refused(tiny_target, tmp_path):
    """Regeneration, cache builds, training runs, exports and calibrations each hold their directory; a second
    writer (another terminal, the CLI next to a Dagster run) is refused instead of writing everything twice."""
    import subprocess
    import sys

    from test_drafters import _model

    from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
    from dspark_core.drafters.checkpoint import save_draft
    from dspark_core.export import export_draft
    from dspark_core.training.trainer import TrainConfig, train_draft

    conversation = {"id": "c", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    config = CacheConfig(layer_ids=(0, 1), dtype="float32")
    build_feature_cache(tiny_target, [conversation], tmp_path / "cache", config, progress=False)
    out = tmp_path / "r"
    exported = tmp_path / "export"
    calibrated = tmp_path / "calibrated"
    locks = [str(d.parent / f".{d.name}.lock") for d in (out, exported, calibrated)]
    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; import time; "
                               f"held = [FileLock(p) for p in {locks!r}]; [l.acquire() for l in held]; "
                               f"print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DsparkError, match="another process is regenerating responses in"):
            regenerate_responses(tiny_target, _prompts("bees"), out, SAMPLED, progress=False)
        assert not (out / "responses.jsonl").exists()
        with pytest.raises(DsparkError, match="another process is building a feature cache"):
            build_feature_cache(tiny_target, [conversation], out, config, progress=False)
        with pytest.raises(DsparkError, match="another process is training a draft"):
            train_draft(tiny_target, FeatureCache(tmp_path / "cache"), out, TrainConfig(steps=1, draft_vocab_size=16),
                        progress=False)
        save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
        with pytest.raises(DsparkError, match="another process is writing an export"):
            export_draft(tmp_path / "draft", exported, "hf")
        from dspark_core.recipes.calibration import calibrate

        with pytest.raises(DsparkError, match="another process is calibrating a draft"):
            calibrate(tiny_target, tmp_path / "draft", [], out=calibrated)
    finally:
        holder.kill()
    assert not list(out.glob("*.safetensors")) and not (out / "state").exists() and not exported.exists()
    assert not calibrated.exists()



def test_answers_to_prompts_the_dataset_no_longer_has_are_removed(tiny_target, tmp_path):
    out = tmp_path / "r"
    regenerate_responses(tiny_target, _prompts("bees", "owls", "fog", "ink"), out, SAMPLED, progress=False)
    current = _prompts("owls", "salt", "maps")
    lines = (out / "responses.jsonl").read_text().splitlines()
    (out / "responses.jsonl").write_text("\n".join(lines + lines[:1]) + "\n")  # and a repeated answer
    manifest = regenerate_responses(tiny_target, current, out, SAMPLED, progress=False)
    assert _ids(out) == sorted(r.id for r, _ in current)
    assert manifest["conversations"] == 3 and manifest["removed_stale_or_repeated"] == 4


def test_a_resumed_sampled_regeneration_writes_what_an_uninterrupted_one_does(tiny_target, tmp_path):
    prompts = _prompts("bees", "owls", "fog", "ink", "salt")
    regenerate_responses(tiny_target, prompts, tmp_path / "whole", SAMPLED, progress=False)
    interrupted = tmp_path / "resumed"
    regenerate_responses(tiny_target, prompts, interrupted, SAMPLED, progress=False)
    lines = (interrupted / "responses.jsonl").read_text().splitlines()
    (interrupted / "responses.jsonl").write_text(lines[0] + "\n" + lines[3][:20])  # killed mid-way
    regenerate_responses(tiny_target, prompts, interrupted, SAMPLED, progress=False)

    def by_id(path):
        return {json.loads(line)["id"]: json.loads(line)["response_ids"]
                for line in (path / "responses.jsonl").read_text().splitlines()}

    assert by_id(interrupted) == by_id(tmp_path / "whole")


def test_every_batch_of_a_sampled_regeneration_draws_with_its_own_seed(tiny_target, tmp_path, monkeypatch):
    """A batch's seed once came from a loop variable that shadowed the batch number, so every full batch drew
    the same random numbers (answers correlated across batches, nothing failed)."""
    from dspark_core.decoding import SpeculativeEngine

    seeds, generate = [], SpeculativeEngine.generate

    def recording(self, prompts, config):
        seeds.append(config.seed)
        return generate(self, prompts, config)

    monkeypatch.setattr(SpeculativeEngine, "generate", recording)
    regenerate_responses(tiny_target, _prompts("bees", "owls", "fog", "ink", "salt", "tea"), tmp_path / "r", SAMPLED,
                         progress=False)
    assert len(seeds) == 3 and len(set(seeds)) == 3


def test_a_manifest_without_answers_does_not_block_other_settings(tiny_target, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"target": "x", "target_revision": "other", "settings": {}}))
    manifest = regenerate_responses(tiny_target, _prompts("bees"), out, SAMPLED, progress=False)
    assert manifest["status"] == "complete"


@pytest.mark.parametrize(("args", "option"), [
    (["train", "--target", "tiny:smollm2-135m", "--steps", "-1"], "--steps"),
    (["train", "--target", "tiny:smollm2-135m", "--draft-vocab", "-5"], "--draft-vocab"),
    (["train", "--target", "tiny:smollm2-135m", "--lr", "0"], "learning_rate"),
    (["data", "cache", "--target", "tiny:smollm2-135m", "--max-length", "-5"], "--max-length"),
    (["data", "regenerate", "--target", "tiny:smollm2-135m", "--batch-size", "-1"], "--batch-size"),
    (["eval", "--target", "tiny:smollm2-135m", "--drafter", ".", "--temperature", "nan"], "temperature"),
    (["generate", "--target", "tiny:smollm2-135m", "--prompt", "x", "--temperature", "nan"], "temperature"),
    (["calibrate", "--target", "tiny:smollm2-135m", "--drafter", ".", "--method", "platt"], "method"),
])
def test_out_of_range_numbers_are_refused_before_anything_is_written(capsys, args, option):
    home = Path(os.environ["DSPARK_HOME"])
    before = sorted(str(p) for p in home.rglob("*") if "profiles" not in p.parts)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and option in err and "Traceback" not in err, err
    assert sorted(str(p) for p in home.rglob("*") if "profiles" not in p.parts) == before


def test_the_dagster_config_refuses_the_same_values():
    from pydantic import ValidationError

    from pipelines.config import DraftTrainingConfig, SpeculativeEvalConfig

    for config, values in ((SpeculativeEvalConfig, {"max_prompts": 0}), (SpeculativeEvalConfig, {"threshold": 2.0}),
                           (DraftTrainingConfig, {"steps": -1}), (DraftTrainingConfig, {"learning_rate": 0.0})):
        with pytest.raises(ValidationError):
            config(**values)


def test_prompt_lines_that_are_not_utf8_or_too_long_are_malformed_lines_not_crashes(capsys, tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_bytes(json.dumps({"prompt": "fine"}).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n'
                       + json.dumps({"prompt": "x" * (2**20 + 10)}).encode() + b"\n")
    code, out, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", "odd-lines"], capsys)
    assert code == 0, err
    said = (out + err).replace("\n", "")  # the console wraps (or folds) lines where the temporary path puts them
    assert "p.jsonl:2" in said and "not UTF-8" in said
    assert "p.jsonl:3" in said and "MiB a prompt line may have" in said
    kept = (Path(os.environ["DSPARK_HOME"]) / "data" / "odd-lines" / "prompts.jsonl").read_text().splitlines()
    assert len(kept) == 1


def test_a_damaged_responses_file_or_draft_config_is_one_line(capsys, tiny_target, tmp_path):
    from test_drafters import _model

    from dspark_core.data.regenerate import read_responses
    from dspark_core.drafters.checkpoint import load_draft, save_draft

    out = tmp_path / "r"
    regenerate_responses(tiny_target, _prompts("bees", "owls"), out, SAMPLED, progress=False)
    with open(out / "responses.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(DsparkError, match=r"responses.jsonl:3: not valid JSON .*run `dspark data regenerate` again"):
        read_responses(out)
    # the command the error names repairs it: the damaged line goes, every prompt keeps exactly one answer
    before = (out / "responses.jsonl").read_text().splitlines()[:2]
    manifest = regenerate_responses(tiny_target, _prompts("bees", "owls"), out, SAMPLED, progress=False)
    assert manifest["removed_damaged"] == ["responses.jsonl:3"]
    assert (out / "responses.jsonl").read_text().splitlines() == before
    assert len(read_responses(out)[1]) == 2
    save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    config["module"]["attention_sinks"] = 4  # a field this version does not know
    (tmp_path / "draft" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DsparkError, match="train or export it again"):
        load_draft(tmp_path / "draft")


def test_a_locked_metrics_database_waits_then_fails_cleanly(tmp_path, caplog):
    import subprocess
    import sys
    import time

    from dspark_core.store import MetricsStore

    path = tmp_path / "locked.duckdb"
    MetricsStore(path).ensure_schema()
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(DsparkError, match="stayed locked by another process"):
            MetricsStore(path, lock_timeout_s=1.0).query("SELECT 1")
        assert time.monotonic() - started >= 1.0
        assert "locked by another process; waiting" in caplog.text
    finally:
        holder.kill()


def test_exporting_into_an_earlier_export_replaces_its_weights(capsys, tiny_target, tmp_path):
    from test_drafters import _model

    from dspark_core.drafters.checkpoint import save_draft, weights_sha256

    save_draft(_model(tiny_target), tmp_path / "a", target=tiny_target)
    save_draft(_model(tiny_target, head="gated"), tmp_path / "b", target=tiny_target)
    for draft, out in (("a", "out"), ("b", "out"), ("a", "ref-a"), ("b", "ref-b")):
        code, _, err = run_cli(["export", str(tmp_path / draft), "--format", "hf", "--out", str(tmp_path / out)], capsys)
        assert code == 0, err
    assert weights_sha256(tmp_path / "out") == weights_sha256(tmp_path / "ref-b") != weights_sha256(tmp_path / "ref-a")
    # no temporary or old copy left (the lock file of the one-writer rule stays, empty)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == [".out.lock"]


def test_a_full_disk_is_one_line(capsys, monkeypatch):
    import dspark_cli.profile

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/somewhere/profiles/x.json")

    monkeypatch.setattr(dspark_cli.profile, "ensure_profile", full)
    code, _, err = run_cli(["profile", "--target", "tiny:smollm2-135m"], capsys)
    assert code == 2 and "the disk is full" in err and "run the same command again" in err and "Traceback" not in err


def test_a_path_that_cannot_be_written_is_one_line(capsys, monkeypatch):
    import dspark_cli.profile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/read-only/profiles/x.json")

    monkeypatch.setattr(dspark_cli.profile, "ensure_profile", denied)
    code, _, err = run_cli(["profile", "--target", "tiny:smollm2-135m"], capsys)
    assert code == 2 and "cannot use /read-only/profiles/x.json: Permission denied" in err and "Traceback" not in err


def test_a_file_that_is_not_a_duckdb_database_is_one_line(capsys, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 100)
    code, _, err = run_cli(["sql", "--db", str(junk), "SELECT 1"], capsys)
    assert code == 2 and "could not be opened as a DuckDB metrics database" in err and "Traceback" not in err
    assert junk.read_text() == "not a database\n" * 100  # untouched


BAD_INPUTS = [  # (arguments, what the one line must say); each once ended, or could end, in a traceback
    (["generate", "--target", "nosuchmodel", "--prompt", "hi"], "unknown model spec 'nosuchmodel'"),
    (["generate", "--target", "hf:no/such-model-xyz", "--prompt", "hi"], "unknown model spec"),
    (["generate", "--target", "TINY", "--drafter", "/nonexistent", "--prompt", "hi"], "unknown drafter '/nonexistent'"),
    (["generate", "--target", "TINY", "--drafter", "draft-lm:nosuch", "--prompt", "hi"], "unknown model spec 'nosuch'"),
    (["generate", "--target", "TINY", "--drafter", "prompt-lookup", "--prompt", "hi", "--max-new-tokens", "100000000"],
     "lower --max-new-tokens"),
    (["export", "/nonexistent"], "is not a draft checkpoint or export"),
    (["calibrate", "--target", "TINY", "--drafter", "/nonexistent"], "is not a draft checkpoint or export"),
    (["eval", "--target", "TINY", "--drafter", "/nonexistent", "--dataset", "nosuch"], "dataset 'nosuch' has no prompts"),
    (["data", "prompts", "--target", "TINY", "--source", "/nonexistent.jsonl", "--dataset", "x"], "does not exist"),
    (["data", "regenerate", "--target", "TINY", "--dataset", "nosuch"], "run `dspark data prompts` first"),
    (["data", "cache", "--target", "TINY", "--dataset", "nosuch"], "run `dspark data regenerate` first"),
    (["train", "--target", "TINY", "--dataset", "nosuch"], "has no finished feature cache"),
    (["profile", "--target", "nosuch"], "unknown model spec 'nosuch'"),
    (["models", "import", "/nonexistent/dir"], "does not exist"),
    (["drafts", "promote", "nosuchmodel", "3"], "has no registered draft version '3'"),
    (["eval", "--target", "TINY", "--drafter", "prompt-lookup", "--suite", "nosuch"], "unknown evaluation suite 'nosuch'"),
    (["eval", "--target", "TINY", "--drafter", "prompt-lookup", "--suite", "gsm8k=/nonexistent.jsonl"],
     "does not exist"),
    (["transfer", "--drafter", "/nonexistent"], "is not a draft checkpoint or export"),
    (["transfer", "--drafter", "/nonexistent", "--target", "nosuch"], "unknown model spec 'nosuch'"),
    (["context-sweep", "--target", "TINY", "--drafter", "prompt-lookup", "--lengths", "8"], "at least 16 tokens"),
    (["models", "derive", "TINY", "--name", "Bad Name"], "use lower-case letters"),
    (["generate", "--target", "TINY", "--device", "gpu0", "--prompt", "hi"], "unknown device 'gpu0'"),
    (["profile", "--target", "TINY", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["models", "derive", "TINY", "--name", "x", "--method", "finetune", "--text", "/nonexistent"],
     "neither a file nor a directory"),
    (["data", "prompts", "--target", "TINY", "--dataset", "d" * 300], "has 300 characters; use at most 100"),
    (["data", "cache", "--target", "TINY", "--dataset", "x", "--layer-ids", "1,1"], "layer_ids lists 1 more than once"),
    (["data", "regenerate", "--target", "TINY", "--dataset", "x", "--temperature", "inf"],
     "temperature must be a finite number"),
    (["train", "--target", "TINY", "--dataset", "x", "--lr", "inf"], "learning_rate must be a finite number"),
    (["train", "--target", "TINY", "--dataset", "x", "--draft-layers", "0,0"], "layer_ids lists 0 more than once"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_one_line_never_a_traceback(capsys, args, message):
    from conftest import TINY

    code, out, err = run_cli([TINY if a == "TINY" else a for a in args], capsys)
    assert code == 2 and message in err + out and "Traceback" not in err + out


def test_only_the_dead_writers_temporaries_of_that_directory_are_removed(tmp_path):
    import tempfile

    from dspark_core.paths import remove_stale_temporaries

    dead = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".export.", suffix=".tmp"))
    sibling = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".export.v2.", suffix=".tmp"))  # another export's
    remove_stale_temporaries(tmp_path / "export")
    assert not dead.exists() and sibling.exists()


def test_concurrent_registrations_lose_no_model(tmp_path):
    """registered.json is read, changed and written back; four processes registering at once once lost each
    other's entries (the last writer won)."""
    import subprocess
    import sys

    script = ("import sys\nfrom dspark_core.models.registry import register_model, request_retraining\n"
              "for i in range(8):\n"
              "    register_model(f'org{sys.argv[1]}/model-{i}')\n"
              "    request_retraining(f'org{sys.argv[1]}/model-{i}', 'test')\n")
    env = {**os.environ, "DSPARK_HOME": str(tmp_path)}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env) for w in range(4)]
    assert all(w.wait(timeout=120) == 0 for w in workers)
    models = json.loads((tmp_path / "models" / "registered.json").read_text())
    assert len(models) == 32 and all("retrain_requested" in entry for entry in models.values())


def test_text_from_users_and_files_is_printed_as_it_is(capsys, tmp_path, monkeypatch, metrics_db):
    """Rich markup and terminal escape sequences in a model path or a stored value: printed literally (control
    characters as escapes), the command succeeds, and what it wrote is what it reported."""
    monkeypatch.setenv("DSPARK_HOME", str(tmp_path / "home"))
    hostile = tmp_path / "m[/red]\x1b[31mx[bold]"
    hostile.mkdir(parents=True)
    (hostile / "config.json").write_text("{}")
    code, out, err = run_cli(["models", "register", str(hostile)], capsys)
    assert code == 0, err
    assert "m[/red]\\x1b[31mx[bold]" in out.replace("\n", "") and "\x1b" not in out
    assert json.loads((tmp_path / "home" / "models" / "registered.json").read_text()).popitem()[1]["spec"] == str(hostile)
    with duckdb.connect(str(metrics_db)) as connection:
        connection.execute("INSERT INTO notes VALUES (chr(27) || '[2J' || chr(7) || 'cleared', 3)")
    code, out, err = run_cli(["sql", "SELECT text FROM notes WHERE n = 3", "--db", str(metrics_db)], capsys)
    assert code == 0, err
    assert "\\x1b[2J\\x07cleared" in out and "\x1b" not in out and "\x07" not in out
    code, _, err = run_cli(["drafts", "promote", "a\x1b[5m[/]", "1", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                           capsys)
    assert code == 2 and "\x1b" not in err and "a\\x1b[5m[/]" in err.replace("\n", "")


@pytest.mark.filterwarnings("default::dspark_core.schemas.UnknownFieldsWarning")
def test_unknown_fields_of_a_dspark_file_are_one_warning_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "registered.json").write_text(json.dumps(
        {"m": {"spec": "smollm2-135m", "registerd_at": "typo"}}))
    code, _, err = run_cli(["models", "register", "smollm2-135m"], capsys)
    assert code == 0
    assert "warning:" in err and "'registerd_at'" in err and "Traceback" not in err and "UnknownFieldsWarning" not in err


def test_an_export_path_that_is_a_link_is_refused_and_nothing_is_lost(capsys, tiny_target, tmp_path):
    from dspark_core.drafters.checkpoint import save_draft, weights_sha256
    from test_drafters import _model

    save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
    code, _, err = run_cli(["export", str(tmp_path / "draft"), "--format", "hf", "--out", str(tmp_path / "first")], capsys)
    assert code == 0, err
    before = weights_sha256(tmp_path / "first")
    (tmp_path / "link").symlink_to(tmp_path / "first")
    code, _, err = run_cli(["export", str(tmp_path / "draft"), "--format", "hf", "--out", str(tmp_path / "link")], capsys)
    assert code == 2 and "is a symbolic link" in err and "Traceback" not in err
    assert (tmp_path / "link").is_symlink() and weights_sha256(tmp_path / "first") == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]
    code, _, err = run_cli(["export", str(tmp_path / "draft"), "--format", "hf", "--out", str(tmp_path / "first")], capsys)
    assert code == 0, err
