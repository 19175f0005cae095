"""At temperature > 0, speculative sampling must produce exactly the target's distribution.

We compare the joint distribution of the first three generated tokens, from thousands of batched requests,
against the exact distribution enumerated from the target itself (a chi-square goodness-of-fit test).
Top-k / top-p on a 64-token model keep the support small enough for the test to have power; the last tests prove it has power by
breaking the residual or the acceptance rule and checking that the check then fails.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from conftest import RandomDrafter, WithConfidences
from dspark_core.decoding import DraftModelDrafter, GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.decoding import verification
from dspark_core.decoding.sampling import probabilities
from dspark_core.decoding.scheduler import ScheduleConfig
from dspark_core.decoding.step_cost import StepCostProfile
from dspark_core.drafters.checkpoint import attach_target_weights
from dspark_core.drafters.dspark import DSparkModel
from dspark_core.drafters.eagle3 import Eagle3Model
from dspark_core.drafters.registry import drafter_kind
from dspark_core.drafters.runtime import DSparkDrafter, Eagle3Drafter

DEPTH = 3
SAMPLES = 4000
CHUNK = 1000
SETTINGS = {
    "t1-topk4": SamplingConfig(temperature=1.0, top_k=4),
    "t1-topp0.8": SamplingConfig(temperature=1.0, top_p=0.8),
}


@torch.inference_mode()
def exact_joint(target, prompt: list[int], sampling: SamplingConfig, depth: int) -> dict[tuple[int, ...], float]:
    """P(first `depth` tokens) under the target, by enumerating every prefix in the truncated support."""
    joint = {(): 1.0}
    for _ in range(depth):
        grown = {}
        for prefix, mass in joint.items():
            logits = target.model(torch.tensor([prompt + list(prefix)])).logits[0, -1]
            probs = probabilities(logits, sampling)
            for token in torch.nonzero(probs).flatten().tolist():
                grown[prefix + (token,)] = mass * float(probs[token])
        joint = grown
    return joint


def sample_counts(target, drafter, prompt, sampling, seed: int = 0, schedule: ScheduleConfig = ScheduleConfig(),
                  step_costs: StepCostProfile | None = None) -> Counter:
    engine = SpeculativeEngine(target, drafter, step_costs=step_costs)
    counts: Counter = Counter()
    for chunk in range(SAMPLES // CHUNK):
        config = GenerationConfig(max_new_tokens=DEPTH, sampling=sampling, stop_at_eos=False, block_size=3,
                                  seed=seed * 1000 + chunk, schedule=schedule)
        result = engine.generate([prompt] * CHUNK, config)
        counts.update(tuple(o.tokens) for o in result.outputs)
    return counts


def chi_square_p_value(counts: Counter, joint: dict) -> float:
    """Goodness of fit; cells with expected count < 5 are pooled (including outcomes of probability 0)."""
    total = sum(counts.values())
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for outcome, prob in joint.items():
        expected = prob * total
        if expected < 5:
            pooled_obs += counts.get(outcome, 0)
            pooled_exp += expected
        else:
            stat += (counts.get(outcome, 0) - expected) ** 2 / expected
            cells += 1
    pooled_obs += sum(n for outcome, n in counts.items() if outcome not in joint)
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    elif pooled_obs:
        return 0.0  # an impossible outcome was sampled
    dof = cells - 1
    if dof == 0:
        return 1.0  # a single possible outcome, and nothing impossible was sampled
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.fixture(scope="module")
def prompt():
    return [5, 17, 42, 8, 33]


@pytest.fixture(scope="module")
def joints(micro_target, prompt):
    return {name: exact_joint(micro_target, prompt, s, DEPTH) for name, s in SETTINGS.items()}


class MistemperedSelfDrafter(DraftModelDrafter):
    """The target itself, sampled at a different temperature and top-k: overlaps the target's distribution
    heavily but with the wrong proportions, so acceptances and rejections are both frequent."""

    def __init__(self, target, sampling: SamplingConfig):
        super().__init__(target, target)
        self.own_sampling = sampling

    def propose(self, request):
        return super().propose(dataclasses.replace(request, sampling=self.own_sampling))


def _untrained_dspark(target) -> DSparkDrafter:
    """A random-init DSpark drafter (Markov head on) over a 40-token draft vocabulary: exercises target
    features, the sequential head and q living on a subset of the vocabulary."""
    config = drafter_kind("dspark").module_config(target, num_layers=1, block_size=3, target_layer_ids=(0, 1),
                                                  head_rank=8, draft_vocab_size=40)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = DSparkModel(config).to(target.dtype)
        torch.nn.init.normal_(model.head.out.weight, std=1.0)
    model.set_draft_vocab(torch.arange(0, 64)[torch.randperm(64, generator=torch.Generator().manual_seed(4))[:40]].sort().values)
    attach_target_weights(model, target)
    return DSparkDrafter(model.eval())


def _untrained_eagle3(target) -> Eagle3Drafter:
    config = drafter_kind("eagle3").module_config(target, block_size=3, target_layer_ids=(0, 1), draft_vocab_size=48)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = Eagle3Model(config).to(target.dtype)
    model.set_draft_vocab(torch.arange(8, 56))
    attach_target_weights(model, target)
    return Eagle3Drafter(model.eval())


def _adversarial(target, joint) -> RandomDrafter:
    # Spiky random q over the target's likely tokens plus junk: accepted often, rejected often.
    support = sorted({t for outcome in joint for t in outcome} | {0, 1, 63})
    return RandomDrafter(support, target.vocab_size, seed=11)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("drafter_name", ["none", "random", "draft-lm", "mistempered-self", "dspark", "eagle3"])
def test_sampled_distribution_matches_target(micro_target, perturbed_micro, prompt, joints, setting, drafter_name):
    joint = joints[setting]
    drafter = {
        "none": None,
        "random": _adversarial(micro_target, joint),
        "draft-lm": DraftModelDrafter(perturbed_micro, micro_target),
        "mistempered-self": MistemperedSelfDrafter(micro_target, SamplingConfig(temperature=2.0, top_k=6)),
        "dspark": _untrained_dspark(micro_target),
        "eagle3": _untrained_eagle3(micro_target),
    }[drafter_name]
    counts = sample_counts(micro_target, drafter, prompt, SETTINGS[setting])
    assert sum(counts.values()) == SAMPLES
    assert len(joint) < SAMPLES / 5, "support too wide for the test to have power"
    assert chi_square_p_value(counts, joint) > 1e-3


#: a cost curve with a step, as measured on CPUs: passes of 1 / 2 / 3 / 4 tokens per request
STEP_COSTS = StepCostProfile(target_spec="micro-llama", target_revision=None, device="cpu: test", dtype="float64",
                             torch_version=torch.__version__, context_tokens=8, rows=[1, CHUNK], widths=[1, 2, 3, 4],
                             ms=[[10, 13, 13.5, 18], [100, 130, 135, 180]], repetitions=1, measured_at="")


@pytest.mark.parametrize(("drafter_name", "mode"), [("mistempered+confidence", "threshold"),
                                                     ("mistempered+confidence", "scheduled"), ("dspark", "scheduled")])
def test_scheduled_verification_keeps_the_target_distribution(micro_target, prompt, joints, drafter_name, mode):
    """Verifying fewer drafts where the confidence is low, decided per request and round, changes nothing about
    the output distribution (the confidence of position k never reads x_k). The confidences depend on the
    previous token, so which requests verify a position varies with what was drafted before it."""
    if drafter_name == "dspark":
        drafter = _untrained_dspark(micro_target)
        with torch.random.fork_rng():
            torch.manual_seed(1)
            torch.nn.init.normal_(drafter.model.confidence.weight, std=0.5)  # spread the confidences
    else:
        drafter = WithConfidences(MistemperedSelfDrafter(micro_target, SamplingConfig(temperature=2.0, top_k=6)))
    counts = sample_counts(micro_target, drafter, prompt, SETTINGS["t1-topk4"], step_costs=STEP_COSTS,
                           schedule=ScheduleConfig(mode=mode, threshold=0.25))
    assert chi_square_p_value(counts, joints["t1-topk4"]) > 1e-3


@pytest.mark.parametrize("adversary", ["random", "mistempered-self"])
def test_the_check_detects_a_broken_residual(micro_target, prompt, joints, monkeypatch, adversary):
    """Sampling the replacement from p instead of normalize(max(0, p - q)) biases the output: must be caught."""
    joint = joints["t1-topk4"]
    monkeypatch.setattr(verification, "residual_distribution", lambda p, q: p)
    drafter = (_adversarial(micro_target, joint) if adversary == "random"
               else MistemperedSelfDrafter(micro_target, SamplingConfig(temperature=2.0, top_k=6)))
    counts = sample_counts(micro_target, drafter, prompt, SETTINGS["t1-topk4"])
    assert chi_square_p_value(counts, joint) < 1e-6


def test_the_check_detects_a_broken_acceptance_rule(micro_target, prompt, joints, monkeypatch):
    """Accepting with probability min(1, 2p/q) instead of min(1, p/q) must be caught too."""
    joint = joints["t1-topk4"]
    original = verification.verify_sampled

    def over_accepting(draft_tokens, lengths, draft_probs, target_probs, generator):
        halved = None if draft_probs is None else draft_probs * 0.5
        return original(draft_tokens, lengths, halved, target_probs, generator)

    monkeypatch.setattr("dspark_core.decoding.engine.verify_sampled", over_accepting)
    drafter = MistemperedSelfDrafter(micro_target, SamplingConfig(temperature=2.0, top_k=6))
    counts = sample_counts(micro_target, drafter, prompt, SETTINGS["t1-topk4"])
    assert chi_square_p_value(counts, joint) < 1e-6


def test_exact_joint_sums_to_one(joints):
    for joint in joints.values():
        assert sum(joint.values()) == pytest.approx(1.0)
        assert all(len(k) == DEPTH for k in joint)


