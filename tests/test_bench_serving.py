"""The serving benchmark runs end to end on the tiny model (its numbers mean nothing there): every method at
every concurrency, outputs identical to autoregressive decoding, the result file and the Pareto plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import TINY
from dspark_core.drafters.checkpoint import save_draft

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_serving_benchmark_smoke(tiny_target, tmp_path):
    import bench_serving
    from test_drafters import _model

    save_draft(_model(tiny_target), tmp_path / "dspark", target=tiny_target)
    save_draft(_model(tiny_target, algorithm="dflash", head="none", confidence=False), tmp_path / "dflash",
               target=tiny_target)
    out = tmp_path / "serving.json"
    assert bench_serving.main(["--target", TINY, "--dspark", str(tmp_path / "dspark"), "--dflash",
                               str(tmp_path / "dflash"), "--concurrency", "1,3", "--prompts-per-slot", "1",
                               "--max-new-tokens", "6", "--block-sizes", "2", "--out", str(out), "--no-record"]) == 0
    result = json.loads(out.read_text())
    methods = {(r["method"], r["concurrency"]) for r in result["results"]}
    assert len(methods) == 2 * 5  # autoregressive, dflash γ2, dspark γ2, threshold, scheduled at R = 1 and 3
    assert all(r["identical_to_autoregressive"] for r in result["results"])
    assert Path(result["plot"]).stat().st_size > 0 and result["git_commit"]
