"""Context-length sweep on the tiny model: prompts built to each length (earlier turns or a document before a
question), capped at the target's context, decoded with a drafter; rows bucketed by length."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from conftest import RandomDrafter
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.evaluation.suites import load_suite
from dspark_core.recipes.context_sweep import SweepConfig, context_prompts, context_sweep

CONVERSATIONS = [[("user", f"Question {i} about topic {i * 7}?"), ("assistant", f"Answer {i}: " + "words " * (5 + 3 * i))]
                 for i in range(40)]


def test_turn_prompts_grow_to_each_length_and_end_with_the_question(tiny_target):
    config = SweepConfig(lengths=(400, 100, 5000), prompts_per_length=3, max_new_tokens=8)
    prompts = context_prompts(tiny_target, load_suite("heldout-v1"), config, conversations=CONVERSATIONS)
    cap = tiny_target.max_context - 8 - 1
    assert list(prompts) == [100, 400, cap]  # sorted; 5000 is beyond the tiny model's context
    for length, built in prompts.items():
        assert len(built) == 3 and [p.domain for p in built] == ["math", "code", "chat"]
        assert all(len(p.ids) <= max(length, 80) for p in built)  # a question alone may exceed the shortest length
    means = [sum(len(p.ids) for p in built) / 3 for built in prompts.values()]
    assert means[0] < means[1] < means[2] and means[2] > 0.8 * cap
    question = tiny_target.tokenizer.decode(prompts[cap][0].ids)
    assert "Question" in question and question.rstrip().endswith("assistant")  # the chat template's answer slot
    with pytest.raises(DsparkError, match="regenerated conversations"):
        context_prompts(tiny_target, load_suite("heldout-v1"), config, conversations=[])


def test_document_prompts_quote_as_much_of_a_document_as_fits(tiny_target, tmp_path):
    (tmp_path / "doc.txt").write_text("The river bends north past the mill. " * 400)
    config = SweepConfig(lengths=(64, 300), prompts_per_length=2, context="documents", documents=str(tmp_path / "doc.txt"))
    prompts = context_prompts(tiny_target, load_suite("heldout-v1"), config)
    assert all(280 <= len(p.ids) <= 300 for p in prompts[300])
    assert "river bends" in tiny_target.tokenizer.decode(prompts[300][0].ids)


def test_sweep_reports_each_length_and_buckets_its_rows(tiny_target, tmp_path):
    vocab = tiny_target.vocab_size
    config = SweepConfig(lengths=(64, 256), prompts_per_length=2, max_new_tokens=6, block_size=3)
    report = context_sweep(tiny_target, RandomDrafter(list(range(vocab)), vocab), load_suite("heldout-v1"), config,
                           conversations=CONVERSATIONS)
    columns, rows = report.table()
    assert [row[0] for row in rows] == [64, 256] and all(row[3] >= 1 for row in rows)
    assert all(row[-1] is None for row in rows)  # not a trained draft: no training length to compare with
    stored = report.acceptance_rows(base_model="tiny", recorded_at=datetime.now(timezone.utc))
    assert {r.context_bucket for r in stored} == {"ctx-64", "ctx-256"}
    assert {r.benchmark for r in stored} == {"context-sweep:turns"} and {r.domain for r in stored} == {"all"}
    assert report.plot(tmp_path / "sweep.png").stat().st_size > 1000


def test_sweep_lengths_are_checked():
    with pytest.raises(ConfigError, match="at least 16 tokens"):
        SweepConfig(lengths=(8,))
    assert SweepConfig(lengths=(512, 128, 128)).lengths == (128, 512)
