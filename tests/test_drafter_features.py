"""Drafters that condition on target features receive exactly the committed positions' features, once."""

from __future__ import annotations

import torch

from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter


class RecordingDrafter(Drafter):
    """Proposes the next tokens of a known continuation (with some wrong ones) and records every feature
    slice the engine hands over, per request."""

    name = "recording"
    feature_layers = (0, 2)
    needs_last_hidden = True

    def __init__(self, continuations: list[list[int]]):
        self.continuations = continuations
        self.received: dict[int, list] = {}
        self.anchor_positions: dict[int, list[int]] = {}

    def begin(self, prompts):
        self.received = {i: [] for i in range(len(prompts))}
        self.anchor_positions = {i: [] for i in range(len(prompts))}
        self.prompt_lengths = [len(p) for p in prompts]

    def propose(self, request: DraftRequest) -> DraftProposal:
        proposals = []
        for rid, tokens, limit, features in zip(request.request_ids, request.tokens, request.max_lengths,
                                                request.new_features):
            if features is not None:
                self.received[rid].append(features)
            self.anchor_positions[rid].append(len(tokens) - 1)
            done = len(tokens) - self.prompt_lengths[rid]
            truth = self.continuations[rid][done : done + limit]
            proposals.append([t if k % 3 != 2 else (t + 1) % 49152 for k, t in enumerate(truth)])
        return DraftProposal.from_lists(proposals)


def test_features_cover_every_committed_position_exactly_once(tiny_target):
    prompts = [tiny_target.encode_prompt(p) for p in ["feature taps for drafters", "short", "a b c d e f g"]]
    reference = SpeculativeEngine(tiny_target).generate(prompts, GenerationConfig(max_new_tokens=30, stop_at_eos=False))
    drafter = RecordingDrafter([o.tokens for o in reference.outputs])
    result = SpeculativeEngine(tiny_target, drafter).generate(
        prompts, GenerationConfig(max_new_tokens=30, stop_at_eos=False, block_size=5)
    )
    assert [o.tokens for o in result.outputs] == [o.tokens for o in reference.outputs]
    assert result.stats.tau > 1.5
    for rid, output in enumerate(result.outputs):
        full = output.prompt_tokens + output.tokens
        pieces = drafter.received[rid]
        layers = [torch.cat([p.layers[i] for p in pieces]) for i in range(2)]
        hidden = torch.cat([p.last_hidden for p in pieces])
        # Everything before the anchor of the last round, in order, with no gaps or repeats.
        covered = drafter.anchor_positions[rid][-1]
        assert hidden.shape[0] == covered
        expected = tiny_target.forward_features(torch.tensor([full[:covered]]), layer_ids=[0, 2], with_logits=False)
        assert torch.allclose(hidden, expected.last_hidden[0], atol=1e-9)
        assert torch.allclose(layers[0], expected.layers[0][0], atol=1e-9)
        assert torch.allclose(layers[1], expected.layers[1][0], atol=1e-9)
