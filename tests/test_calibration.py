"""Confidence evaluation and sequential temperature scaling: metrics on known inputs, recovery of a known
temperature from synthetic over-confident scores, and the calibration recipe end to end on a tiny draft."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import torch

from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.decoding.metrics import RoundRecord
from dspark_core.drafters.checkpoint import load_draft, load_drafter, save_draft
from dspark_core.evaluation.calibration import (
    calibration_metrics, expected_calibration_error, fit_temperatures, position_samples, reliability_bins,
)
from dspark_core.evaluation.speculative import EvalPrompt
from dspark_core.export.formats import export_draft
from dspark_core.recipes.calibration import CalibrationConfig, calibrate


def test_ece_and_reliability_bins_on_a_hand_made_example():
    predicted = np.array([0.05, 0.15, 0.15, 0.95])
    observed = np.array([False, True, False, True])
    # bins: [0, .1): 0.05 vs 0 -> .05 (1 of 4); [.1, .2): .15 vs .5 -> .35 (2 of 4); [.9, 1]: .95 vs 1 -> .05
    assert expected_calibration_error(predicted, observed) == pytest.approx((0.05 + 2 * 0.35 + 0.05) / 4)
    bins = reliability_bins(predicted, observed)
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[1]["predicted"] == pytest.approx(0.15) and bins[1]["observed"] == pytest.approx(0.5)


def test_position_samples_follow_the_survival_event():
    records = [RoundRecord(proposed=3, accepted=1, emitted=2, confidences=(0.8, 0.5, 0.5)),
               RoundRecord(proposed=1, accepted=1, emitted=2, confidences=(0.6,)),
               RoundRecord(proposed=2, accepted=0, emitted=1)]  # no confidences: not a sample
    first, second, third = position_samples(records)
    assert first.survived.tolist() == [True, True] and second.survived.tolist() == [False]
    assert first.survival() == pytest.approx([0.8, 0.6]) and third.survival() == pytest.approx([0.2])
    # a temperature T applies to the logit: σ(logit(0.8) / 2) = 2/3
    assert first.survival([2.0])[0] == pytest.approx(2 / 3)


def _overconfident_rounds(temperature: float, count: int, depth: int, seed: int = 0) -> list[RoundRecord]:
    """Rounds whose true conditional acceptance is σ(z_k) but whose head reports σ(T·z_k)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.4, 1.2, size=(count, depth))
    accept = rng.random((count, depth)) < 1 / (1 + np.exp(-z))
    reported = 1 / (1 + np.exp(-temperature * z))
    return [RoundRecord(proposed=depth, accepted=int(np.cumprod(a).sum()), emitted=1 + int(np.cumprod(a).sum()),
                        confidences=tuple(c)) for a, c in zip(accept, reported)]


def test_sts_recovers_a_known_temperature_and_lowers_ece():
    fit = position_samples(_overconfident_rounds(2.5, 20000, 3, seed=0))
    temperatures, shifts = fit_temperatures(fit)
    assert temperatures == pytest.approx([2.5, 2.5, 2.5], rel=0.15) and shifts == [0.0, 0.0, 0.0]
    test = position_samples(_overconfident_rounds(2.5, 20000, 3, seed=1))
    before, after = calibration_metrics(test), calibration_metrics(test, temperatures)
    for b, a in zip(before, after):
        assert a.ece < b.ece / 3 and abs(a.mean_predicted - a.observed_rate) < 0.02
    assert after[0].auroc == pytest.approx(before[0].auroc)  # one monotone rescaling keeps position 1's ranking


def test_calibrated_scores_stay_put():
    """Scores that are already calibrated get temperatures near 1."""
    temperatures, _ = fit_temperatures(position_samples(_overconfident_rounds(1.0, 20000, 2, seed=2)))
    assert temperatures == pytest.approx([1.0, 1.0], rel=0.15)


def test_the_affine_method_also_removes_a_bias_a_temperature_cannot():
    """A head that reports σ(z + 1.2) where σ(z) survive: temperature scaling alone leaves much of the error; the
    affine method (fitted on the Brier score) recovers the shift, keeps the temperature and removes the error."""
    rng = np.random.default_rng(3)
    z = rng.normal(-0.8, 1.0, size=(20000, 2))
    accept = rng.random(z.shape) < 1 / (1 + np.exp(-z))
    rounds = [RoundRecord(2, int(np.cumprod(a).sum()), 1, tuple(1 / (1 + np.exp(-(row + 1.2)))))
              for a, row in zip(accept, z)]
    samples = position_samples(rounds)
    temperatures, shifts = fit_temperatures(samples, method="affine")
    assert shifts == pytest.approx([-1.2, -1.2], abs=0.2) and temperatures == pytest.approx([1.0, 1.0], rel=0.15)
    affine = calibration_metrics(samples, temperatures, shifts)
    sts = calibration_metrics(samples, *fit_temperatures(samples))
    for a, t in zip(affine, sts):
        assert a.ece < 0.01 < t.ece and abs(a.mean_predicted - a.observed_rate) < 0.01


def test_calibration_recipe_writes_a_calibrated_draft_that_decoding_uses(tiny_target, tmp_path):
    from test_drafters import _model

    save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
    texts = ["first prompt here", "a second one", "third request text", "the fourth", "number five", "six six"]
    prompts = [EvalPrompt(f"p{i}", "chat", tiny_target.encode_prompt(t)) for i, t in enumerate(texts)]
    report = calibrate(tiny_target, tmp_path / "draft", prompts,
                       CalibrationConfig(max_prompts=6, max_new_tokens=12, test_fraction=0.5, method="temperature"))
    assert report.skipped is None and report.calibrated_path == tmp_path / "calibrated"
    assert len(report.temperatures) == 4 and report.fit_prompts + report.test_prompts == 6
    assert [m.position for m in report.after] == [1, 2, 3, 4]
    model, config = load_draft(report.calibrated_path, tiny_target)
    assert model.config.confidence_temperatures == pytest.approx(tuple(report.temperatures))
    assert model.config.confidence_shifts == (0.0, 0.0, 0.0, 0.0)  # the temperature method shifts nothing
    assert config["calibration"]["temperatures"] == report.temperatures
    original, _ = load_draft(tmp_path / "draft")
    calibrated, _ = load_draft(report.calibrated_path)
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), calibrated.state_dict().values()))
    # the temperatures travel with an export and are what the drafter applies
    exported = export_draft(report.calibrated_path, tmp_path / "export")
    drafter = load_drafter(exported, tiny_target)
    assert drafter.confidence_temperatures == pytest.approx(tuple(report.temperatures))
    result = SpeculativeEngine(tiny_target, drafter).generate([prompts[0].ids],
                                                              GenerationConfig(max_new_tokens=6, block_size=4))
    assert all(len(r.confidences) == r.proposed for r in result.outputs[0].rounds)
    rows = report.acceptance_rows(base_model="tiny", recorded_at=datetime(2026, 1, 1))
    assert {r.metric for r in rows} >= {"ece", "brier"} and {r.benchmark for r in rows} == {
        "calibration-temperature:heldout-v1", "calibration-temperature:heldout-v1:uncalibrated"}
    columns, table = report.table()
    assert len(table) == 4 and len(columns) == len(table[0])
    assert report.plot(tmp_path / "reliability.png").stat().st_size > 0


def test_a_draft_without_confidence_head_is_passed_through(tiny_target, tmp_path):
    from test_drafters import _model

    save_draft(_model(tiny_target, algorithm="dflash", head="none"), tmp_path / "draft", target=tiny_target)
    report = calibrate(tiny_target, tmp_path / "draft", [EvalPrompt("p", "chat", [1, 2, 3])])
    assert report.skipped and report.calibrated_path == tmp_path / "draft" and not report.after
