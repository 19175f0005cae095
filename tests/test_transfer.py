"""Transfer tests: derived base models (re-quantized, fine-tuned), the transfer matrix on tiny models, the
retention rule, and the retraining request that the new-base-model sensor turns into a run."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import pytest
import torch

from conftest import TINY, run_cli
from dspark_core.drafters.checkpoint import load_drafter, save_draft
from dspark_core.errors import ConfigError, DsparkError, ModelSpecError
from dspark_core.evaluation.suites import load_suite
from dspark_core.models import load_target
from dspark_core.models.derive import DeriveConfig, derive_model, derived_dir, lineage, parent_spec
from dspark_core.models.registry import register_model, registered_models, request_retraining, retraining_requests
from dspark_core.recipes.transfer import Retention, TrainedDraft, TransferConfig, TransferReport, transfer_report
from test_drafters import _model


def _decoder_linear(model):
    return model.model.layers[0].self_attn.q_proj.weight


@pytest.fixture(scope="module")
def quantized(tiny_target):
    """X′ = the tiny target with every decoder weight rounded to 3 bits."""
    derive_model(tiny_target, "tiny-q3", DeriveConfig(method="quantize", bits=3), overwrite=True)
    return load_target("derived:tiny-q3", device="cpu", dtype="float64")


def test_quantized_variant_keeps_the_tokenizer_and_records_its_lineage(tiny_target, quantized):
    assert quantized.spec == "derived:tiny-q3" and quantized.vocab_size == tiny_target.vocab_size
    assert quantized.tokenizer("a test")["input_ids"] == tiny_target.tokenizer("a test")["input_ids"]
    assert quantized.revision != tiny_target.revision
    original, rounded = _decoder_linear(tiny_target.model), _decoder_linear(quantized.model)
    assert not torch.equal(original, rounded)
    assert torch.equal(tiny_target.model.get_input_embeddings().weight, quantized.model.get_input_embeddings().weight)
    # 3 bits: each group of 32 weights shares one scale, so at most 7 distinct magnitudes per group
    assert rounded[0, :32].abs().unique().numel() <= 4
    record = lineage(derived_dir("tiny-q3"))
    assert record["parent"] == TINY and record["method"] == "quantize" and record["settings"]["bits"] == 3
    assert parent_spec("derived:tiny-q3") == TINY and parent_spec(TINY) is None


def test_more_bits_change_the_weights_less(tiny_target):
    errors = [derive_model(tiny_target, f"tiny-b{bits}", DeriveConfig(bits=bits), overwrite=True)
              .stats["mean_relative_weight_error"] for bits in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_finetuned_variant_learns_from_the_text(tiny_target, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("def add(a, b):\n    return a + b\n" * 200)
    report = derive_model(tiny_target, "tiny-ft", DeriveConfig(method="finetune", text=str(tmp_path / "notes"), steps=8,
                                                               learning_rate=3e-3, sequence_length=32, batch_size=2))
    assert report.stats["last_loss"] < report.stats["first_loss"]  # repeated text: the loss falls quickly
    tuned = load_target("derived:tiny-ft", device="cpu", dtype="float32")
    assert not torch.equal(_decoder_linear(tuned.model).double(), _decoder_linear(tiny_target.model))
    assert all(not p.requires_grad for p in tiny_target.model.parameters())  # the parent stays frozen, unchanged


def test_derive_refuses_bad_names_existing_models_and_missing_text(tiny_target, tmp_path):
    with pytest.raises(ConfigError, match="lower-case"):
        derive_model(tiny_target, "Bad Name", DeriveConfig())
    derive_model(tiny_target, "tiny-once", DeriveConfig())
    with pytest.raises(DsparkError, match="exists"):
        derive_model(tiny_target, "tiny-once", DeriveConfig())
    with pytest.raises(ConfigError, match="neither a file nor a directory"):
        derive_model(tiny_target, "tiny-nothing", DeriveConfig(method="finetune", text=str(tmp_path / "none")))
    with pytest.raises(ModelSpecError, match="dspark models derive"):
        load_target("derived:never-made")


def _drafts(tiny_target, tmp_path) -> list[TrainedDraft]:
    paths = []
    for algorithm in ("dspark", "dflash"):
        save_draft(_model(tiny_target, algorithm=algorithm), tmp_path / algorithm, target=tiny_target)
        paths.append(tmp_path / algorithm)
    return [TrainedDraft.from_path(path) for path in paths]


def test_transfer_matrix_on_a_derived_model_and_a_model_of_other_shapes(tiny_target, quantized, micro_target, tmp_path):
    drafts = _drafts(tiny_target, tmp_path)
    with pytest.raises(DsparkError, match="trained for"):  # outside a transfer test a draft is tied to its revision
        load_drafter(drafts[0].path, quantized)
    config = TransferConfig(max_prompts=2, max_new_tokens=6, block_size=3)
    def broken():
        raise ModelSpecError("no such file")

    report = transfer_report(drafts, {"tiny-smollm2-135m": lambda: tiny_target, "derived-tiny-q3": lambda: quantized,
                                      "micro": lambda: micro_target, "broken": broken},
                             {"derived-tiny-q3": "tiny-smollm2-135m"}, [load_suite("heldout-v1")], config)
    columns, rows = report.matrix()
    assert columns[1:] == ["tiny-smollm2-135m", "derived-tiny-q3", "micro", "broken"]
    assert [row[0] for row in rows] == ["tiny-smollm2-135m · dspark", "tiny-smollm2-135m · dflash"]
    assert all(isinstance(v, float) and v >= 1 for row in rows for v in row[1:3])
    assert all(row[3].startswith("n/a: hidden size") for row in rows)
    assert all(row[4] == "n/a: cannot load broken (ModelSpecError: no such file)" for row in rows)
    retention = report.retentions()
    assert {(r.draft, r.parent, r.derived) for r in retention} == {
        (row[0], "tiny-smollm2-135m", "derived-tiny-q3") for row in rows}
    assert all(r.ratio == pytest.approx(r.tau_derived / r.tau_parent) for r in retention)
    families = report.family_table()
    assert families[0] == ["base model", "τ dspark", "τ dflash", "DSpark vs DFlash", "DSpark vs Eagle3"]
    assert families[1][0][0] == "tiny-smollm2-135m" and families[1][0][3] == pytest.approx(rows[0][1] / rows[1][1] - 1)
    assert report.heat_map(tmp_path / "heat.png").stat().st_size > 1000
    stored = report.acceptance_rows(recorded_at=datetime.now(timezone.utc))
    assert {r.base_model for r in stored} == {"tiny-smollm2-135m", "derived-tiny-q3"}
    assert {(r.base_model, r.draft_version) for r in stored} == {("tiny-smollm2-135m", None),
                                                                 ("derived-tiny-q3", "trained-on:tiny-smollm2-135m")}
    json.dumps(report.to_json())


def test_retention_rule_flags_a_derived_model_when_the_best_draft_keeps_too_little():
    drafts = [TrainedDraft(None, "x", "dspark"), TrainedDraft(None, "x", "dflash")]
    taus = {("x · dspark", "x"): 2.0, ("x · dspark", "x2"): 1.5, ("x · dflash", "x"): 1.6, ("x · dflash", "x2"): 1.6,
            ("x · dspark", "x3"): 1.9, ("x · dflash", "x3"): 1.0}
    report = TransferReport(TransferConfig(retention_threshold=0.9), drafts, {"x": None, "x2": "x", "x3": "x"})
    report.tau = lambda draft, target: taus[(draft.label, target)]
    # x2: the best draft on x (dspark, 2.0) keeps 75 %, although dflash keeps 100 %; x3: dspark keeps 95 %
    assert set(report.retraining_needed()) == {"x2"} and "75%" in report.retraining_needed()["x2"]
    assert Retention("d", "x", "x2", 2.0, 1.5).ratio == 0.75


def test_a_retraining_request_starts_the_data_run_once(tmp_path):
    from pipelines.sensors import new_base_model_sensor

    slug = register_model(TINY)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("base_model", list(registered_models()))
        assert isinstance(new_base_model_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
        request_retraining(TINY, "keeps 70% of its parent's τ")
        result = new_base_model_sensor(dg.build_sensor_context(instance=instance))
        (run,) = result.run_requests
        assert run.partition_key == slug and run.run_key == f"retrain:{slug}:{retraining_requests()[slug]['at']}"
        assert run.tags["dspark/retrain_reason"] == "keeps 70% of its parent's τ"
        again = new_base_model_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
        assert isinstance(again, dg.SkipReason)  # acted on once
    # a model that is not registered yet is registered by the request (and gets its partition and first run)
    (tmp_path / "other.gguf").write_bytes(b"")
    other = request_retraining(str(tmp_path / "other.gguf"), "new")
    assert other in registered_models()


def test_transfer_cli(capsys, tiny_target, quantized, tmp_path):
    drafts = _drafts(tiny_target, tmp_path)
    code, out, err = run_cli(["transfer", "--drafter", str(drafts[0].path), "--target", "derived:tiny-q3",
                              "--max-prompts", "1", "--max-new-tokens", "4", "--retention-threshold", "1",
                              "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    assert "transfer matrix" in out and "derived-tiny-q3" in out and "recorded" in out
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["matrix"]["columns"][1:] == ["tiny-smollm2-135m", "derived-tiny-q3"]
    assert (tmp_path / "t.png").is_file()
    ratio = result["retention"]["rows"][0][5]
    assert ("derived-tiny-q3" in result["retraining_needed"]) == (ratio < 1)
