"""Evaluation suites: every loader shape on local files, malformed lines, the train/eval separation check, the
balanced selection, and a suite evaluation of several drafters on the tiny model (Table 1 and the rows)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from conftest import RandomDrafter
from dspark_core.data.prompts import MalformedDataError, PromptRecord, write_prompts
from dspark_core.decoding import PromptLookupDrafter
from dspark_core.errors import DsparkError
from dspark_core.evaluation.suites import STANDARD_SETS, load_suite
from dspark_core.recipes.evaluation import EvalConfig
from dspark_core.recipes.suite_evaluation import evaluate_suite, resolve_suites


def _jsonl(path, objects):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


def test_builtin_suite_has_three_domains_of_forty():
    suite = load_suite("heldout-v1")
    assert suite.name == "heldout-v1" and suite.domains == ["math", "code", "chat"]
    assert all(sum(r.source == d for r in suite.records) == 40 for d in suite.domains)


@pytest.mark.parametrize("name, row, expected", [
    ("gsm8k", {"question": "How many legs do 3 cows have?", "answer": "12"}, "How many legs do 3 cows have?"),
    ("math500", {"problem": "Compute $2^{10}$.", "solution": "1024"}, "Compute $2^{10}$."),
    ("aime", {"problem": "Find the number of integers n.", "answer": 7}, "Find the number of integers n."),
    ("mbpp", {"text": "Write a function to reverse a list.", "code": "..."}, "Write a function to reverse a list."),
    ("humaneval", {"prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n"}, "def add(a, b):\n    \"\"\"Add.\"\"\""),
    ("livecodebench", {"question_title": "t", "question_content": "Read N and print N+1."}, "Read N and print N+1."),
    ("mt-bench", {"prompt": ["Write a haiku.", "Now make it rhyme."], "category": "writing"}, "Write a haiku."),
    ("alpaca", {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
     "Translate to French.\n\nGood morning"),
    ("arena-hard", {"question_id": "x", "category": "arena-hard-v0.1", "turns": [{"content": "Explain CRDTs."}]},
     "Explain CRDTs."),
])
def test_local_copy_of_each_standard_benchmark_in_its_own_columns(tmp_path, name, row, expected):
    suite = load_suite(f"{name}={_jsonl(tmp_path / f'{name}.jsonl', [row, row])}")
    assert suite.name == name and len(suite.records) == 1  # duplicates dropped
    record = suite.records[0]
    assert record.messages == (("user", expected),)  # multi-turn sets keep their first turn
    # the set's domain (a column of Table 1), not a row's own category (MT-Bench's "writing")
    assert record.source == STANDARD_SETS[name].domain


def test_spec_bench_shaped_file_and_its_categories(tmp_path):
    path = _jsonl(tmp_path / "question.jsonl", [
        {"question_id": 1, "category": "math_reasoning", "turns": ["What is 7 * 8?"]},
        {"question_id": 2, "category": "translation", "turns": ["Translate 'cat' to German.", "And to Dutch?"]},
        {"question_id": 3, "turns": ["Say hi."]},
    ])
    suite = load_suite(str(path))
    assert suite.name == "question"
    assert [(r.source, r.user_turns) for r in suite.records] == [
        ("math_reasoning", ["What is 7 * 8?"]), ("translation", ["Translate 'cat' to German."]),
        ("general", ["Say hi."])]
    # the same file as a local copy of a named benchmark: Spec-Bench rows pass through, in the set's domain
    assert {r.source for r in load_suite(f"gsm8k={path}").records} == {"math"}


def test_parquet_copy_goes_through_datasets(tmp_path):
    import datasets

    path = tmp_path / "gsm8k.parquet"
    datasets.Dataset.from_list([{"question": "What is 1 + 1?", "answer": "2"}]).to_parquet(str(path))
    assert load_suite(f"gsm8k={path}").records[0].messages == (("user", "What is 1 + 1?"),)


def test_malformed_lines_skip_or_raise_with_their_location(tmp_path):
    from dspark_core.data.prompts import LoadReport

    path = _jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Fine?"}, "{not json", {"answer": "no question"}])
    with pytest.raises(MalformedDataError, match=r"gsm8k.jsonl:2"):
        load_suite(f"gsm8k={path}")
    report = LoadReport()
    suite = load_suite(f"gsm8k={path}", on_error="skip", report=report)
    assert len(suite.records) == 1 and len(report.malformed) == 2
    assert "gsm8k.jsonl:3" in report.malformed[1]


def test_unknown_names_missing_files_and_offline_hub_say_what_to_do(tmp_path):
    with pytest.raises(DsparkError, match="unknown evaluation suite 'nosuch'.*NAME=PATH"):
        load_suite("nosuch")
    with pytest.raises(DsparkError, match="does not exist"):
        load_suite(f"gsm8k={tmp_path / 'missing.jsonl'}")
    with pytest.raises(DsparkError, match="unknown format"):
        load_suite(f"gsm8k={_jsonl(tmp_path / 'x.txt', ['a'])}")
    # the tests run with HF_HUB_OFFLINE=1: the hub is unreachable, and the message names the offline way
    with pytest.raises(DsparkError, match=r"--suite gsm8k=PATH.jsonl"):
        load_suite("gsm8k")


def test_suites_are_checked_against_the_training_prompts(tmp_path):
    suite_file = _jsonl(tmp_path / "mine.jsonl", [{"turns": ["Prompt A"], "category": "chat"},
                                                  {"turns": ["Prompt B"], "category": "chat"}])
    training = tmp_path / "prompts.jsonl"
    write_prompts([PromptRecord.create([("user", "Prompt C")], "self")], training, 0.0)
    assert [b.name for b in resolve_suites([str(suite_file), "heldout-v1"], training)] == ["mine", "heldout-v1"]
    write_prompts([PromptRecord.create([("user", "Prompt B")], "self")], training, 0.0)
    with pytest.raises(DsparkError, match="also training prompts.*Prompt B"):
        resolve_suites([str(suite_file)], training)
    # the dataset's own held-out split is a suite too
    write_prompts([PromptRecord.create([("user", f"Prompt {i}")], "self") for i in range(20)], training, 0.5)
    held_out = resolve_suites(["validation"], training)[0]
    assert held_out.name == "held-out" and 0 < len(held_out.records) < 20
    with pytest.raises(DsparkError, match="same benchmark name"):
        resolve_suites(["heldout-v1", "heldout-v1"], None)


def test_a_small_selection_covers_every_domain_in_turn():
    suite = load_suite("heldout-v1")
    picked = suite.selected(5)
    assert [r.source for r in picked.records] == ["math", "code", "chat", "math", "code"]
    assert suite.selected(500) is suite


def test_suite_evaluation_of_two_drafters_on_two_benchmarks(tiny_target, tmp_path):
    """One autoregressive baseline per benchmark shared by both drafters; Table 1 has a column per (domain,
    benchmark); every report's rows carry its own benchmark name and go into the store in one write."""
    from dspark_core.store import MetricsStore

    own = load_suite(str(_jsonl(tmp_path / "own.jsonl", [{"turns": ["one two three one two three"], "category": "code"}])))
    benchmarks = [load_suite("heldout-v1"), own]
    config = EvalConfig(max_prompts=2, max_new_tokens=6, block_size=3)
    vocab = tiny_target.model.config.vocab_size
    report = evaluate_suite(tiny_target, {"random": RandomDrafter(list(range(vocab)), vocab),
                                          "lookup": PromptLookupDrafter()}, benchmarks, config)
    assert report.columns() == [("math", "heldout-v1"), ("code", "heldout-v1"), ("code", "own")]
    for benchmark in ("heldout-v1", "own"):
        first, second = (report.reports[label][benchmark] for label in ("random", "lookup"))
        assert first.baseline is second.baseline and first.config.benchmark == benchmark
    columns, rows = report.table()
    assert columns[0] == "drafter" and columns[-3:] == ["mean τ", "speed-up", "greedy = AR"]
    assert [row[0] for row in rows] == ["random", "lookup"] and all(row[-1] is True for row in rows)
    assert all(tau >= 1 for row in rows for tau in row[1:5])
    position_columns, _ = report.position_table()
    assert position_columns == ["drafter", "@1", "@2", "@3"]
    assert set(report.metrics("random")) >= {"mean_tau", "tau.heldout-v1.math", "tau.own.code", "cond_accept_1"}
    store = MetricsStore(tmp_path / "metrics.duckdb")
    rows = report.acceptance_rows(base_model="tiny", recorded_at=datetime.now(timezone.utc))
    assert store.record(rows) == len(rows) and store.record(rows) == len(rows)  # idempotent
    _, counted = store.query("SELECT benchmark, count(DISTINCT measurement_key) FROM acceptance_metrics GROUP BY 1 ORDER BY 1")
    assert counted == [("heldout-v1", 2), ("own", 2)]
    assert json.loads(json.dumps(report.to_json()))["benchmarks"] == {"heldout-v1": 2, "own": 1}


def test_make_runs_table_reads_only_the_platforms_own_evaluations(tmp_path):
    """`make run` prints the latest evaluation of each registered draft version on the default suite; a later
    command-line evaluation (no version) or a transfer test of another model's draft does not replace it."""
    from dataclasses import replace as with_
    from datetime import timedelta

    from dspark_core.store import AcceptanceRow, MetricsStore

    store, now = MetricsStore(tmp_path / "m.duckdb"), datetime.now(timezone.utc)

    def measurement(key, version, tau, when, benchmark="heldout-v1"):
        row = AcceptanceRow(when, key, None, None, "m", None, "dspark", None, version, benchmark, 0.0, 2, "t")
        return [with_(row, value=tau, n=100), with_(row, metric="cond_accept", position=1, value=0.3, n=90),
                with_(row, metric="cond_accept", position=2, value=0.2, n=20)]

    for rows in (measurement("a", "1", 1.40, now), measurement("b", None, 1.10, now + timedelta(hours=1)),
                 measurement("c", "trained-on:x", 1.05, now + timedelta(hours=2)),
                 measurement("d", "2", 1.90, now + timedelta(hours=3), benchmark="other")):
        store.record(rows)
    columns, rows = store.latest_registered_tau("m", ("heldout-v1",))
    (row,) = [dict(zip(columns, r)) for r in rows]
    assert (row["drafter"], row["draft_version"], row["tau"], row["cond_accept"]) == ("dspark", "1", 1.40, "0.30 0.20")
