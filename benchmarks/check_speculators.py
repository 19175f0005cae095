"""Do serving engines get the draft we evaluated? Load each speculators export with vLLM's `speculators` package
itself and compare its draft logits with ours on the same target features.

For every export: our loader rebuilds the draft and computes teacher-forced block logits (DSpark/DFlash: blocks
at many anchors of one real token sequence; Eagle3: the training-time-test chain at every position) from the
target's own hidden states; `speculators_side.py` then runs in an environment that has `speculators` (it pins
its own transformers, so give its Python with --python or $DSPARK_SPECULATORS_PYTHON), loads the export with
the package's loader, reports unexpected keys, missing keys and weights left unset, and computes the same
logits with the package's modules. An export passes when no key is unexpected, missing or unset and the
logits agree within float tolerance (hence the same greedy proposals).

Usage:
  python benchmarks/check_speculators.py EXPORT [EXPORT ...] --python /path/to/venv/bin/python
         [--out benchmarks/results/speculators-check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file, save_file

from dspark_core.drafters.checkpoint import load_draft, read_draft_config
from dspark_core.models import load_target
from dspark_core.paths import write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from dspark_core.provenance import provenance  # noqa: E402

console = Console(width=160)
SIDE = Path(__file__).with_name("speculators_side.py")
TEXT = ("A farmer has 17 sheep and buys 5 more each week. After 4 weeks he sells half of them. How many sheep "
        "does he have left? First, 5 sheep a week for 4 weeks is 20 sheep, so he has 17 + 20 = 37. Half of 37 "
        "is 18.5, so he cannot sell exactly half; if he sells 18 he keeps 19.")
#: |Δlogit| allowed, relative to the largest |logit| (both sides compute in float32, in a different op order)
RELATIVE_TOLERANCE = 1e-4


def speculators_python(explicit: str | None = None) -> str | None:
    """The Python that has `speculators`: --python, $DSPARK_SPECULATORS_PYTHON, or this one if it has it."""
    if explicit or os.environ.get("DSPARK_SPECULATORS_PYTHON"):
        return explicit or os.environ["DSPARK_SPECULATORS_PYTHON"]
    import importlib.util

    return sys.executable if importlib.util.find_spec("speculators") else None


@torch.no_grad()
def our_logits(export: Path, target, text: str = TEXT) -> tuple[dict, dict]:
    """(inputs for the speculators side, our logits) for `export` on one token sequence of `text`."""
    model, config = load_draft(export, target)
    model = model.float()
    ids = torch.tensor([target.encode_prompt(text)])
    length, gamma = ids.shape[1], model.config.block_size
    layers = target.forward_features(ids, layer_ids=model.config.target_layer_ids, with_logits=False).layers
    features = torch.cat(layers, dim=-1).float()
    if config["algorithm"] == "eagle3":
        anchors = torch.arange(1, length - gamma + 1)  # chains from every context entry whose steps stay in range
        inputs = {"hidden_states": features, "input_ids": ids, "steps": torch.tensor(gamma)}
    else:
        anchors = torch.arange(1, length - model.config.slots)  # speculators never anchors in a block's last slots
        inputs = {"hidden_states": features, "input_ids": ids, "anchors": anchors}
    logits, confidence = model.forward_train(features, ids, torch.tensor([length]), anchors[None])
    ours = {"logits": logits[0], "anchors": anchors}
    if confidence is not None:
        ours["confidence_logits"] = confidence[0]
    return inputs, ours


def compare(ours: dict, theirs: dict, algorithm: str) -> dict:
    """Largest logit difference (absolute, and relative to the largest logit), greedy agreement, confidences."""
    mine = ours["logits"]
    if algorithm == "eagle3":
        other = theirs["logits"][ours["anchors"] - 1]  # their entry j = (x_{j+1}, g_j) starts our chain at j + 1
    elif theirs["logits"].shape[1] == mine.shape[1] + 1:
        other = theirs["logits"][:, 1:]  # the anchor slot of a block whose mask slots draft predicts nothing
    else:
        other = theirs["logits"]
    if mine.shape != other.shape:
        return {"shape_ours": list(mine.shape), "shape_theirs": list(other.shape), "equal": False}
    difference = (mine - other).abs().max().item()
    scale = max(1.0, mine.abs().max().item())
    result = {"blocks": mine.shape[0], "positions": mine.shape[1], "vocab": mine.shape[2],
              "max_abs_logit_diff": difference, "max_relative_logit_diff": difference / scale,
              "greedy_agreement": (mine.argmax(-1) == other.argmax(-1)).float().mean().item()}
    if "confidence_logits" in ours:
        result["max_abs_confidence_diff"] = (ours["confidence_logits"] - theirs["confidence_logits"]).abs().max().item()
    result["equal"] = result["max_relative_logit_diff"] <= RELATIVE_TOLERANCE and result.get(
        "max_abs_confidence_diff", 0.0) <= RELATIVE_TOLERANCE * scale
    return result


def check_export(export: Path, python: str, target=None) -> dict:
    """Load `export` with `speculators` (in `python`) and compare its logits with ours."""
    source = read_draft_config(export)
    target = target or load_target(source["target"], device="cpu", dtype=torch.float32)
    inputs, ours = our_logits(export, target)
    with tempfile.TemporaryDirectory() as scratch:
        save_file({k: v.contiguous() for k, v in inputs.items()}, f"{scratch}/inputs.safetensors")
        run = subprocess.run([python, str(SIDE), str(export), f"{scratch}/inputs.safetensors", f"{scratch}/out"],
                             capture_output=True, text=True)
        if run.returncode != 0:
            return {"export": str(export), "algorithm": source["algorithm"], "passed": False,
                    "error": (run.stderr or run.stdout).strip().splitlines()[-20:]}
        report = json.loads(Path(f"{scratch}/out/speculators_report.json").read_text())
        theirs = load_file(f"{scratch}/out/speculators_logits.safetensors")
    comparison = compare(ours, theirs, source["algorithm"])
    keys_clean = not (report["unexpected_keys"] or report["missing_keys"] or report["unset_after_load"])
    return {"export": str(export), "algorithm": source["algorithm"], "head": source["module"].get("head"),
            **report, **comparison, "passed": keys_clean and comparison["equal"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", type=Path, help="directories written by `dspark export --format speculators`")
    parser.add_argument("--python", help="a Python with the speculators package (default: $DSPARK_SPECULATORS_PYTHON)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    python = speculators_python(args.python)
    if python is None:
        console.print("[red]error:[/] no Python with the speculators package: install it in its own virtualenv "
                      "(python -m venv v && v/bin/pip install torch==2.13.0 speculators==0.9.0 && v/bin/pip uninstall -y "
                      "torchvision torchaudio) and pass --python v/bin/python")
        return 2
    results = [check_export(export, python) for export in args.exports]
    table = Table(title="speculators loads our exports")
    for column in ("export", "class", "tensors", "unexpected", "missing", "unset", "max |Δlogit|", "rel.",
                   "greedy agree", "max |Δconf|", "passed"):
        table.add_column(column, justify="right")
    for r in results:
        if "error" in r:
            table.add_row(Path(r["export"]).name, "error: " + (r["error"][-1] if r["error"] else "?"), *[""] * 8, "no")
            continue
        table.add_row(Path(r["export"]).name, r["class"], str(r["stored_tensors"]), str(len(r["unexpected_keys"])),
                      str(len(r["missing_keys"])), str(len(r["unset_after_load"])),
                      f"{r.get('max_abs_logit_diff', float('nan')):.2e}", f"{r.get('max_relative_logit_diff', float('nan')):.1e}",
                      f"{r.get('greedy_agreement', 0):.4f}",
                      f"{r['max_abs_confidence_diff']:.2e}" if "max_abs_confidence_diff" in r else "–",
                      "yes" if r["passed"] else "NO")
    console.print(table)
    for r in results:
        for field in ("unexpected_keys", "missing_keys", "unset_after_load", "error"):
            if r.get(field):
                console.print(f"{Path(r['export']).name} {field}: {r[field]}")
    if args.out:
        write_json_atomic(args.out, {"command": "python benchmarks/check_speculators.py " + " ".join(
            map(str, argv if argv is not None else sys.argv[1:])), **provenance(), "results": results})
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
