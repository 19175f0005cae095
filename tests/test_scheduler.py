"""Verification scheduling: the greedy admission on hand-made tables, why it stops early, the step-cost
profile, and lossless decoding in every schedule mode (greedy here; sampled in test_lossless_sampling)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conftest import WithConfidences
from dspark_core.decoding import DraftModelDrafter, GenerationConfig, PromptLookupDrafter, SpeculativeEngine
from dspark_core.decoding.scheduler import ScheduleConfig, schedule_lengths, survival, threshold_lengths
from dspark_core.decoding.step_cost import (ProfileConfig, StepCostProfile, decoding_profile, ensure_profile,
                                             measure_profile)
from dspark_core.decoding.verification import residual_distribution
from dspark_core.errors import ConfigError


def packed_cost(table: dict[int, float]):
    """Cost of a pass over B = Σ(1 + ℓ_r) tokens, from a hand-made table."""
    return lambda lengths: table[sum(1 + n for n in lengths)]


def test_survival_is_the_cumulative_product_of_confidences():
    assert survival([[0.9, 0.5, 0.5], []]) == [pytest.approx([0.9, 0.45, 0.225]), []]


def test_greedy_admission_returns_the_lengths_computed_by_hand():
    # Θ starts at τ/t = 2/1.0. Admit (r0, 1): 2.9/1.1 = 2.64. Admit (r0, 2): 3.5/1.2 = 2.92.
    # Next (r1, 1), a = 0.5: 4.0/1.5 = 2.67 < 2.92, stop.
    survivals = [[0.9, 0.6, 0.2], [0.5, 0.1]]
    cost = packed_cost({2: 1.0, 3: 1.1, 4: 1.2, 5: 1.5, 6: 1.6, 7: 1.7})
    assert schedule_lengths(survivals, cost) == [2, 0]
    # Cheap verification admits everything; a steep cost admits nothing.
    assert schedule_lengths(survivals, packed_cost({b: 1.0 for b in range(2, 8)})) == [3, 2]
    assert schedule_lengths(survivals, packed_cost({b: b - 1.0 for b in range(2, 8)})) == [0, 0]


def test_latency_case_trades_each_extra_token_against_its_survival():
    # R = 1 with the CPU-like curve 47/55/58/77 ms for 1/2/3/4 tokens: the second token pays when a_1 > 8/47,
    # the third when a_2 > (1 + a_1)·3/55, the fourth only when a_3 > (1 + a_1 + a_2)·19/58.
    cost = packed_cost({1: 47.0, 2: 55.0, 3: 58.0, 4: 77.0})
    assert schedule_lengths([[0.15, 0.1, 0.05]], cost) == [0]
    assert schedule_lengths([[0.5, 0.05, 0.01]], cost) == [1]
    assert schedule_lengths([[0.8, 0.5, 0.4]], cost) == [2]
    assert schedule_lengths([[0.95, 0.9, 0.85]], cost) == [2]  # 0.85 < 2.85·19/58 = 0.93
    assert schedule_lengths([[0.99, 0.985, 0.98]], cost) == [3]  # 0.98 > 2.975·19/58 = 0.975


def test_threshold_mode_keeps_positions_whose_survival_reaches_it():
    assert threshold_lengths([[0.9, 0.5, 0.2], [0.2], []], 0.3) == [2, 0, 0]
    assert threshold_lengths([[0.3, 0.3]], 0.3) == [2]


def test_without_the_early_stop_the_admission_looks_ahead():
    # Θ dips at the first candidate, then rises: the anticipating variant admits both positions, the greedy
    # admission neither. The verdict on position 1 then depends on a_2, i.e. on c_2, which reads x_1.
    cost = packed_cost({1: 1.0, 2: 1.5, 3: 1.55})
    assert schedule_lengths([[0.4, 0.39]], cost) == [0]
    assert schedule_lengths([[0.4, 0.39]], cost, early_stop=False) == [2]


def _first_token_distribution(p, q, c1, c2_of, cost, early_stop):
    """Exact distribution of the first emitted token when x_1 ~ q is verified or not as the schedule says."""
    out = torch.zeros_like(p)
    for x1 in range(len(q)):
        length = schedule_lengths([[c1, c1 * c2_of(x1)]], cost, early_stop=early_stop)[0]
        if length == 0:
            out += q[x1] * p  # nothing verified: the target samples the token itself
        else:
            accept = min(1.0, float(p[x1] / q[x1]))
            emitted = (1 - accept) * residual_distribution(p[None], q[None])[0]
            emitted[x1] += accept
            out += q[x1] * emitted
    return out


def test_the_early_stop_is_what_keeps_sampling_lossless():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # the target's next-token distribution
    q = torch.tensor([0.2, 0.4, 0.4], dtype=torch.float64)  # the draft's
    c2_of = lambda x1: 0.975 if x1 == 0 else 0.1  # noqa: E731 - c_2 reads the drafted x_1, as the head does
    cost = packed_cost({1: 1.0, 2: 1.5, 3: 1.55})
    exact = _first_token_distribution(p, q, 0.4, c2_of, cost, early_stop=True)
    assert torch.allclose(exact, p)
    biased = _first_token_distribution(p, q, 0.4, c2_of, cost, early_stop=False)
    assert biased[0] == pytest.approx(0.6)  # x_1 = 0 is verified (and accepted) only when it was drafted


def _profile(rows=(1, 4), ms=((10, 11, 12, 16, 17, 18, 19, 20), (14, 16, 18, 26, 28, 30, 32, 34))):
    return StepCostProfile(target_spec="test", target_revision="r", device="cpu: test", dtype="float64",
                           torch_version=torch.__version__, context_tokens=16, rows=list(rows),
                           widths=list(range(1, len(ms[0]) + 1)), ms=[list(m) for m in ms], repetitions=1,
                           measured_at="2026-01-01T00:00:00+00:00")


def test_profile_interpolates_between_measured_shapes_and_costs_rounds_per_token():
    profile = _profile()
    assert profile.seconds(1, 3) == pytest.approx(0.012)
    assert profile.seconds(2, 1) == pytest.approx((10 + (14 - 10) / 3) / 1e3)
    assert profile.seconds(1, 9) == pytest.approx(0.021)  # beyond the widths: extrapolated
    # per-token model: 1 + 4 + 2 = 7 tokens over 3 requests
    assert profile.pass_cost([0, 3, 1]) == pytest.approx(profile.seconds(3, 7 / 3))
    assert profile.pass_cost([2], uncached=[30]) == pytest.approx(profile.seconds(1, 32))


def test_a_pass_runs_at_the_cheapest_measured_width_at_least_as_wide():
    # as on CPUs whose BLAS multiplies 2- and 3-row matrices slowly: 4 tokens cost less than 2 or 3
    profile = _profile(rows=(1,), ms=((10, 20, 30, 15, 40, 50),))
    assert [profile.padded_width(1, w) for w in range(1, 7)] == [1, 4, 4, 4, 5, 6]
    assert profile.padded_seconds(1, 3) == pytest.approx(0.015)
    assert profile.padded_seconds(1, 2.5) == pytest.approx(0.015)
    assert profile.pass_cost([2]) == pytest.approx(0.015)  # the anchor and 2 drafts, run as 4 columns
    costs = [profile.padded_seconds(1, w / 4) for w in range(4, 25)]
    assert costs == sorted(costs), "what the scheduler is charged never falls as the pass widens"
    assert _profile().padded_width(1, 3) == 3  # cost growing with width: nothing is padded
    assert profile.padded_width(2, 2) == 2  # a batch size that was not measured: nothing is padded either
    falling = _profile(rows=(1,), ms=((10, 20, 30, 15),))  # its last slope falls: extrapolation must not
    assert falling.padded_seconds(1, 6) >= falling.padded_seconds(1, 4)
    assert profile.pass_cost([2], uncached=[5]) == pytest.approx(profile.seconds(1, 7))  # prompt passes: not padded


def test_a_decoding_measures_the_widths_it_pads_to_once_or_goes_without(micro_target, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_HOME", str(tmp_path))
    profile = decoding_profile(micro_target, 2)  # one request, widths 1..5; the context fits the model's 256
    assert profile.rows == [1] and profile.widths == [1, 2, 3, 4, 5] and profile.context_tokens == 251
    assert decoding_profile(micro_target, 1).measured_at == profile.measured_at  # stored and reused
    monkeypatch.setattr(type(micro_target), "max_context", property(lambda self: 4))
    monkeypatch.setenv("DSPARK_HOME", str(tmp_path / "other"))
    assert decoding_profile(micro_target, 2) is None  # no room for a profile: the decoding is simply not padded


def test_profile_is_measured_stored_and_rebuilt_when_stale(micro_target):
    config = ProfileConfig(rows=(1, 2), max_width=3, context_tokens=8, warmup=0, repetitions=2)
    profile, reason = ensure_profile(micro_target, config)
    assert reason == "no profile yet" and profile.path.is_file()
    assert len(profile.ms) == 2 and len(profile.ms[0]) == 3 and all(ms > 0 for line in profile.ms for ms in line)
    again, reason = ensure_profile(micro_target, config)
    assert reason is None and again.ms == profile.ms
    stale = again.to_dict() | {"torch_version": "0.0"}
    profile.path.write_text(json.dumps(stale))
    _, reason = ensure_profile(micro_target, config)
    assert reason.startswith("torch_version")
    with pytest.raises(ConfigError, match="context"):
        measure_profile(micro_target, ProfileConfig(context_tokens=micro_target.max_context))


def test_schedule_settings_are_checked():
    with pytest.raises(ConfigError, match="mode"):
        ScheduleConfig(mode="adaptive")
    with pytest.raises(ConfigError, match="threshold"):
        ScheduleConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="max_batch"):
        GenerationConfig(max_batch=0)


@pytest.fixture(scope="module")
def prompts(tiny_target):
    return [tiny_target.encode_prompt(p) for p in
            ["Hello there, my friend", "one two three one two three one two", "x", "The quick brown fox jumps",
             "a fifth request joins later"]]


@pytest.fixture(scope="module")
def reference(tiny_target, prompts):
    config = GenerationConfig(max_new_tokens=20, stop_at_eos=False)
    return [SpeculativeEngine(tiny_target).generate([p], config).outputs[0].tokens for p in prompts]


@pytest.mark.parametrize("mode", ["threshold", "scheduled"])
@pytest.mark.parametrize("drafter_name", ["self", "perturbed"])
def test_scheduled_greedy_decoding_is_identical_to_autoregressive(tiny_target, perturbed_tiny, prompts, reference,
                                                                   mode, drafter_name):
    inner = DraftModelDrafter(tiny_target if drafter_name == "self" else perturbed_tiny, tiny_target)
    engine = SpeculativeEngine(tiny_target, WithConfidences(inner), step_costs=_profile())
    config = GenerationConfig(max_new_tokens=20, stop_at_eos=False, block_size=6,
                              schedule=ScheduleConfig(mode=mode, threshold=0.2))
    result = engine.generate(prompts, config)
    assert [o.tokens for o in result.outputs] == reference
    lengths = {r.proposed for o in result.outputs for r in o.rounds}
    assert len(lengths) > 2, f"the schedule should vary the verified length, got {lengths}"
    assert all(len(r.confidences) == r.proposed for o in result.outputs for r in o.rounds)


def test_scheduled_mode_needs_a_profile(tiny_target, prompts):
    engine = SpeculativeEngine(tiny_target, WithConfidences(DraftModelDrafter(tiny_target, tiny_target)))
    with pytest.raises(ConfigError, match="step-cost profile"):
        engine.generate(prompts[:1], GenerationConfig(max_new_tokens=4, schedule=ScheduleConfig(mode="scheduled")))


@pytest.mark.parametrize("drafter_name", ["none", "prompt-lookup", "draft-lm", "dspark", "eagle3"])
def test_continuous_batching_refills_slots_and_stays_identical(tiny_target, perturbed_tiny, prompts, reference,
                                                               drafter_name):
    from test_drafters import _eagle3, _model
    from dspark_core.drafters.runtime import DSparkDrafter, Eagle3Drafter

    drafter = {"none": lambda: None, "prompt-lookup": PromptLookupDrafter,
               "draft-lm": lambda: DraftModelDrafter(perturbed_tiny, tiny_target),
               "dspark": lambda: DSparkDrafter(_model(tiny_target)),
               "eagle3": lambda: Eagle3Drafter(_eagle3(tiny_target))}[drafter_name]()
    engine = SpeculativeEngine(tiny_target, drafter)
    config = GenerationConfig(max_new_tokens=20, stop_at_eos=False, block_size=4, max_batch=2)
    result = engine.generate(prompts, config)
    assert [o.tokens for o in result.outputs] == reference
    assert all(o.latency_s > 0 for o in result.outputs)
    # two slots for five requests: about three waves of rounds, where all at once is one
    at_once = engine.generate(prompts, replace(config, max_batch=None))
    assert result.stats.batch_rounds >= 2 * at_once.stats.batch_rounds
    assert result.outputs[-1].latency_s < 0.75 * result.stats.wall_s  # the last one's latency counts from its admission


@pytest.mark.parametrize("drafter_name", ["prompt-lookup", "dspark", "eagle3"])
def test_padded_passes_decode_exactly_what_unpadded_ones_do(tiny_target, perturbed_tiny, prompts, reference,
                                                            drafter_name):
    from test_drafters import _eagle3, _model
    from dspark_core.drafters.runtime import DSparkDrafter, Eagle3Drafter

    drafter = {"prompt-lookup": PromptLookupDrafter, "dspark": lambda: DSparkDrafter(_model(tiny_target)),
               "eagle3": lambda: Eagle3Drafter(_eagle3(tiny_target))}[drafter_name]()
    widest = _profile(rows=(1, 2), ms=(tuple(range(30, 21, -1)), tuple(range(60, 51, -1))))  # 9 columns cheapest
    widths = []
    forward = tiny_target.forward_features

    def recording(input_ids, **kwargs):
        widths.append(input_ids.shape[1])
        return forward(input_ids, **kwargs)

    tiny_target.forward_features = recording
    try:
        engine = SpeculativeEngine(tiny_target, drafter, step_costs=widest)
        config = GenerationConfig(max_new_tokens=20, stop_at_eos=False, block_size=3, max_batch=2)
        result = engine.generate(prompts, config)
    finally:
        del tiny_target.forward_features
    assert [o.tokens for o in result.outputs] == reference
    assert widths.count(9) >= result.stats.batch_rounds // 2, "verification passes should run 9 columns wide"

