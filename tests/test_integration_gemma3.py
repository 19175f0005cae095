"""Integration test on the real packaged Gemma 3 270M: a second architecture family, with sliding-window
attention layers, decoded past its 512-token window."""

from __future__ import annotations

import pytest
import torch

from dspark_core.decoding import GenerationConfig, PromptLookupDrafter, SpeculativeEngine
from dspark_core.models import load_target

pytestmark = pytest.mark.integration


def test_gemma3_speculative_greedy_matches_transformers_past_the_sliding_window():
    target = load_target("gemma3-270m", device="cpu", dtype="float32")
    assert target.snapshot.info["model_type"] == "gemma3_text" and target.num_layers == 18
    assert not target.has_chat_template
    window = target.config.sliding_window
    text = " ".join(f"Item {i} is a {['red', 'blue', 'green'][i % 3]} box." for i in range(90))
    ids = target.encode_prompt(text + " Item 90 is a")
    assert len(ids) > window
    reference = target.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    result = SpeculativeEngine(target, PromptLookupDrafter()).generate([ids], GenerationConfig(max_new_tokens=24))
    assert result.outputs[0].tokens == reference[: len(result.outputs[0].tokens)]
    assert result.stats.tau > 1.5
