"""Integration tests on the real packaged SmolLM2-135M-Instruct (imported once per test session)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from dspark_core.models import load_target

pytestmark = pytest.mark.integration

REPEATING_PROMPT = (
    "Copy this text exactly: The red fox runs through the green forest and the red fox sleeps under the old tree. "
    "The red fox runs through the green forest and the red fox sleeps under the old tree."
)


def _generate(capsys, *extra) -> dict:
    code, out, err = run_cli(
        ["generate", "--target", "smollm2-135m", "--prompt", REPEATING_PROMPT, "--chat", "--max-new-tokens", "48",
         "--json", *extra],
        capsys,
    )
    assert code == 0, err
    return json.loads(out)


def test_prompt_lookup_is_lossless_and_accepts_more_than_one_token(capsys, smollm2):
    speculative = _generate(capsys, "--drafter", "prompt-lookup")
    plain = _generate(capsys, "--drafter", "prompt-lookup", "--no-speculative")
    assert speculative["requests"][0]["tokens"] == plain["requests"][0]["tokens"]
    assert speculative["stats"]["tau"] > 1.0
    assert plain["stats"]["tau"] == 1.0
    assert speculative["stats"]["rounds"] < plain["stats"]["rounds"]


def test_snapshot_reload_is_fast_and_identical(smollm2):
    started = time.perf_counter()
    again = load_target("smollm2-135m", device="cpu", dtype="float32")
    assert time.perf_counter() - started < 20  # the GGUF import (tokenizer conversion) is not repeated
    assert again.revision == smollm2.revision
    assert again.snapshot.info["model_type"] == "llama" and again.num_layers == 30
    assert again.has_chat_template and again.eos_token_ids == smollm2.eos_token_ids


def test_self_generated_prompts_are_plausible_user_requests(smollm2):
    from dspark_core.data.selfgen import SelfGenerationConfig, self_generated_prompts

    records = self_generated_prompts(smollm2, SelfGenerationConfig(count=4, batch_size=8, seed=1), progress=False)
    assert len(records) == 4 and len({r.id for r in records}) == 4
    for record in records:
        (text,) = record.user_turns
        assert 16 <= len(text) <= 400 and "<|im_start|>" not in text
