import pytest
import torch

from dspark_core.decoding.sampling import SamplingConfig, probabilities


def test_temperature_scales_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    probs = probabilities(logits, SamplingConfig(temperature=0.5))
    assert torch.allclose(probs, torch.softmax(logits / 0.5, -1))


def test_top_k_keeps_exactly_k_and_renormalizes():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 1.0]])
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.nonzero(probs[0]).flatten().tolist() == [1, 2]
    assert torch.allclose(probs[0, [1, 2]], torch.softmax(torch.tensor([3.0, 2.0]), -1))


def test_top_p_keeps_smallest_prefix_reaching_p():
    base = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = base.log()[None]
    # 0.5 < 0.7 so the second token is needed; 0.5 + 0.3 >= 0.7 so the third is not.
    kept = probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.7))[0]
    assert torch.allclose(kept, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    # Exactly reaching p with the first token keeps only it.
    assert probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.5))[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_invalid_settings_are_rejected():
    for kwargs in ({"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            SamplingConfig(**kwargs)
    with pytest.raises(ValueError):
        probabilities(torch.zeros(1, 3), SamplingConfig(temperature=0))
