"""Exports load in vLLM's `speculators` package exactly: no unexpected, missing or unset weights, and the same
draft logits as ours. Runs when a Python with the package is at hand ($DSPARK_SPECULATORS_PYTHON, or this
one); installing it is not part of `make test` (it pins its own transformers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dspark_core.drafters.checkpoint import save_draft
from dspark_core.export import export_draft
from test_drafters import EXACT, _eagle3, _model

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import check_speculators  # noqa: E402

DRAFTS = {
    "dspark-markov": lambda t: _model(t, **EXACT),
    "dspark-gated": lambda t: _model(t, head="gated", **EXACT),
    "dspark-rnn": lambda t: _model(t, head="rnn", **EXACT),
    "dflash": lambda t: _model(t, algorithm="dflash", sample_from_anchor=False, **EXACT),
    "eagle3": _eagle3,
}


@pytest.mark.parametrize("kind", sorted(DRAFTS))
def test_speculators_loads_the_export_with_our_logits(tiny_target, tmp_path, kind):
    python = check_speculators.speculators_python()
    if python is None:
        pytest.skip("no Python with the speculators package (set DSPARK_SPECULATORS_PYTHON)")
    save_draft(DRAFTS[kind](tiny_target), tmp_path / "draft", target=tiny_target)
    export_draft(tmp_path / "draft", tmp_path / "export", "speculators")
    result = check_speculators.check_export(tmp_path / "export", python, target=tiny_target)
    assert "error" not in result, result.get("error")
    assert result["unexpected_keys"] == [] and result["missing_keys"] == [] and result["unset_after_load"] == []
    assert result["max_relative_logit_diff"] <= check_speculators.RELATIVE_TOLERANCE
    assert result["greedy_agreement"] == 1.0 and result["passed"]


def test_check_without_the_package_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DSPARK_SPECULATORS_PYTHON", raising=False)
    monkeypatch.setattr(check_speculators, "speculators_python", lambda explicit=None: None)
    assert check_speculators.main([str(tmp_path)]) == 2
    assert "pip install torch==2.13.0 speculators==0.9.0" in capsys.readouterr().out
