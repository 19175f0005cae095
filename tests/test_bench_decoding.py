"""The decoding benchmark's parts on tiny models: the truncated assistant (a model of the target's class over its
first K layers), transformers' assisted generation with it, the decoding_benchmarks table, and the benchmark's
main function end to end (its numbers mean nothing on the tiny model; that it runs and stays lossless does)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY
from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.truncated import truncated_copy
from dspark_core.store import DecodingBenchmarkRow, MetricsStore, decoding_benchmark_rows, record_decoding_benchmark
from dspark_core.store.acceptance import now_utc

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def _prompt(target, text="Add the numbers 12 and 30, then explain the steps."):
    return target.encode_prompt(text, chat=True)


def _early_exit_logits(model, ids, k):
    """The target's logits read after its first k layers: LM head (with any softcapping) over the final norm."""
    hidden = model(ids, output_hidden_states=True).hidden_states[k]  # [0] is the embedding; [k]: after layer k-1
    logits = model.lm_head(model.model.norm(hidden))
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def test_truncated_copy_shares_the_target_and_equals_it_with_every_layer(tiny_target):
    model, ids = tiny_target.model, torch.tensor([_prompt(tiny_target)])
    full = truncated_copy(model, tiny_target.num_layers)
    assert type(full) is type(model) and full is not model
    assert full.config.vocab_size == model.config.vocab_size and full.config.hidden_size == model.config.hidden_size
    assert full.get_input_embeddings() is model.get_input_embeddings()
    assert full.get_output_embeddings() is model.get_output_embeddings()
    assert torch.equal(full(ids).logits, model(ids).logits)

    one = truncated_copy(model, 1)
    assert one.config.num_hidden_layers == 1 and len(one.model.layers) == 1 and one.model.layers[0] is model.model.layers[0]
    assert model.config.num_hidden_layers == len(model.model.layers) == tiny_target.num_layers  # target untouched
    assert not any(t.is_meta for t in [*one.parameters(), *one.buffers()])
    assert torch.allclose(one(ids).logits, _early_exit_logits(model, ids, 1), rtol=0, atol=1e-12)
    for bad in (0, tiny_target.num_layers + 1):
        with pytest.raises(ConfigError):
            truncated_copy(model, bad)


def test_truncated_copy_of_a_gemma3_model_keeps_its_layer_types():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                              max_position_embeddings=128, final_logit_softcapping=30.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(config).to(torch.float64).eval()
        ids = torch.randint(0, 128, (1, 12))  # longer than the sliding window
    assert "full_attention" in model.config.layer_types[3:] and "sliding_attention" in model.config.layer_types[:3]
    three = truncated_copy(model, 3)
    assert three.config.layer_types == model.config.layer_types[:3]
    assert torch.allclose(three(ids).logits, _early_exit_logits(model, ids, 3), rtol=0, atol=1e-10)
    assert torch.equal(truncated_copy(model, 6)(ids).logits, model(ids).logits)


def test_transformers_assisted_generation_with_the_truncated_assistant_is_the_targets_greedy_output(tiny_target):
    from bench_decoding import TransformersMethod

    assistant = truncated_copy(tiny_target.model, 1)
    prompts = [_prompt(tiny_target), _prompt(tiny_target, "Write a Python function that reverses a list.")]
    for ids in prompts:
        ours = SpeculativeEngine(tiny_target, None).generate([ids], GenerationConfig(max_new_tokens=24)).outputs[0].tokens
        plain = TransformersMethod("hf", tiny_target, {}, "", speculative=False).decode(ids, 24)
        assisted = TransformersMethod("hf-assisted", tiny_target, {"assistant_model": assistant}, "",
                                      speculative=True).decode(ids, 24)
        lookup = TransformersMethod("hf-pl", tiny_target, {"prompt_lookup_num_tokens": 5}, "",
                                    speculative=True).decode(ids, 24)
        assert plain.tokens == assisted.tokens == lookup.tokens == ours
        assert plain.forwards == len(plain.tokens)  # one target pass per token; the assistant's are not counted
        assert 1 <= assisted.forwards <= len(assisted.tokens) and 1 <= lookup.forwards <= len(lookup.tokens)


def _row(run_id: str, method: str, metric: str, value: float) -> DecodingBenchmarkRow:
    return DecodingBenchmarkRow(recorded_at=now_utc(), run_id=run_id, machine="test cpu", code_version="0",
                                git_commit="abc", target=TINY, revision="r", device="cpu", dtype="torch.float32",
                                suite="heldout-v1", method=method, prompts=2, max_new_tokens=8, metric=metric,
                                value=value, n=16)


def test_the_decoding_benchmarks_table_round_trips_and_rewrites_a_run_in_place(tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    first = [_row("run-a", "ours-ar", "tokens_per_s", 31.5), _row("run-a", "hf-assisted", "tau", 1.75)]
    assert record_decoding_benchmark(store, "run-a", first) == 2
    assert record_decoding_benchmark(store, "run-a", first) == 2  # again: replaced, not duplicated
    assert record_decoding_benchmark(store, "run-b", [replace(first[0], run_id="run-b", value=40.0)]) == 1
    columns, rows = decoding_benchmark_rows(store)
    assert len(rows) == 3
    stored = {(r[columns.index("run_id")], r[columns.index("method")], r[columns.index("metric")]): r for r in rows}
    tau = stored[("run-a", "hf-assisted", "tau")]
    assert tau[columns.index("value")] == 1.75 and tau[columns.index("n")] == 16 and tau[columns.index("target")] == TINY
    assert len(decoding_benchmark_rows(store, "run-b")[1]) == 1
    with pytest.raises(DsparkError):
        record_decoding_benchmark(store, "run-c", first)
    _, tables = store.query("SELECT table_name FROM information_schema.tables")
    assert {"decoding_benchmarks", "acceptance_metrics"} <= {name for (name,) in tables}  # beside the other tables


def test_decoding_benchmark_main_end_to_end(tiny_target, tmp_path):
    import bench_decoding
    from dspark_core.drafters.checkpoint import save_draft
    from test_drafters import _model

    save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
    out, db = tmp_path / "results" / "decoding.json", tmp_path / "metrics.duckdb"
    assert bench_decoding.main(["--target", TINY, "--dtype", "float64", "--prompts", "2", "--max-new-tokens", "8",
                                "--drafter", f"tiny-dspark={tmp_path / 'draft'}", "--no-default-drafters",
                                "--no-vllm", "--out", str(out), "--db", str(db)]) == 0
    result = json.loads(out.read_text())
    methods = ["ours-ar", "hf-generate", "hf-prompt-lookup", "hf-assisted", "ours-prompt-lookup", "tiny-dspark"]
    assert result["methods"] == methods and set(result["results"]) == set(methods)
    assert result["settings"]["prompts"] == 2 and len(result["domains"]) == 2  # spread over the suite's domains
    assert result["git_commit"] and result["machine"]["cpu_count"] and result["code_version"]
    for name, r in result["results"].items():
        assert r["identical_to_ours_ar"] == 2, name  # float64: every method is exactly the target's greedy output
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0
        assert (r["tau"] is not None) == r["speculative"]
        assert (r["draft_ms_per_round"] is not None) == (r["speculative"] and not name.startswith("hf-"))
    assert result["results"]["ours-ar"]["speedup_vs_ours_ar"] == 1.0
    # the batch pass: every method that takes batches (transformers' assisted generation takes one request)
    batched = result["batched"]["results"]
    assert result["batched"]["methods"] == ["ours-ar", "hf-generate", "ours-prompt-lookup", "tiny-dspark"]
    for name in ("ours-ar", "ours-prompt-lookup", "tiny-dspark"):
        assert batched[name]["identical_to_ours_ar"] == 2, name  # a batch decodes each request as alone
    assert batched["ours-ar"]["speedup_vs_ours_ar"] == 1.0 and batched["hf-generate"]["tokens_per_s"] > 0
    assert "| hf-assisted |" in out.with_suffix(".md").read_text()
    columns, rows = decoding_benchmark_rows(MetricsStore(db), result["run_id"])
    assert {r[columns.index("method")] for r in rows} == set(methods) | {f"{m}@batch2" for m in batched}
    assert {"tokens_per_s", "speedup_vs_hf_generate", "tau", "efficiency"} <= {r[columns.index("metric")] for r in rows}


def test_without_a_dagster_instance_the_newest_export_of_each_drafter_is_current(tmp_path, monkeypatch):
    import os

    from bench_decoding import current_exports

    monkeypatch.setenv("DSPARK_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    root = tmp_path / "exports" / "smollm2-135m"
    for mtime, name in enumerate(["old-speculators", "new-hf.old", ".new-hf.x1.tmp", "not-an-export"]):
        directory = root / "dspark" / name
        directory.mkdir(parents=True)
        if name != "not-an-export":
            (directory / "dspark_export.json").write_text("{}")
        os.utime(directory, (1_000 + mtime, 1_000 + mtime))
    (root / "eagle3").mkdir()
    # new-hf was being replaced when its writer died: its set-aside copy is what readers load (settled_directory)
    assert current_exports("smollm2-135m") == {"dspark": root / "dspark" / "new-hf"}
