"""Shared fixtures. Every test session writes under its own temporary $DSPARK_HOME."""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Set before dspark_core is imported anywhere, so nothing touches the user's real home. Worker processes that
# import this module again (multiprocessing's spawn) reuse the session's home instead of making their own.
_SESSION_HOME = Path(os.environ.get("DSPARK_TEST_SESSION_HOME") or tempfile.mkdtemp(prefix="dspark-test-home-"))
os.environ["DSPARK_TEST_SESSION_HOME"] = os.environ["DSPARK_HOME"] = str(_SESSION_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Training's 'auto' precision follows the CPU's bfloat16 instructions; the suite's tolerances (ranks vs one rank,
# resumed vs uninterrupted, overfitting thresholds) are float32's, and CI's CPU may differ from this one: every
# test, and every command it starts, trains in float32 unless it asks for bfloat16 (tests/test_training.py does)
os.environ["DSPARK_CPU_BFLOAT16"] = "0"

from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter  # noqa: E402
from dspark_core.decoding.sampling import sample  # noqa: E402
from dspark_core.models import TargetModel, load_target  # noqa: E402

TINY = "tiny:smollm2-135m"


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's $DSPARK_HOME (about 2 GB of converted model snapshots); a test machine that runs the
    suite many times must not fill its disk. DSPARK_KEEP_TEST_HOME=1 keeps it for a post-mortem."""
    if os.environ.get("DSPARK_KEEP_TEST_HOME") == "1":
        print(f"\nkept the test home {_SESSION_HOME}")
        return
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_target() -> TargetModel:
    """The tiny random SmolLM2-family model in float64 (exact comparisons are then free of float noise)."""
    return load_target(TINY, device="cpu", dtype="float64")


@pytest.fixture(scope="session")
def perturbed_tiny(tiny_target) -> TargetModel:
    """A different model with the same tokenizer: the tiny target with noise on every weight."""
    return _perturbed(tiny_target, 0.05, 1, "tiny-perturbed")


def _perturbed(target: TargetModel, scale: float, seed: int, name: str) -> TargetModel:
    model = copy.deepcopy(target.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    return TargetModel(model, target.tokenizer, None, name)


@pytest.fixture(scope="session")
def micro_target(tiny_target) -> TargetModel:
    """A 2-layer Llama over a 64-token vocabulary with peaked distributions, for statistical tests that
    need thousands of samples (token ids only; the tokenizer is borrowed for EOS bookkeeping)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.6, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float64)
    return TargetModel(model, tiny_target.tokenizer, None, "micro-llama")


@pytest.fixture(scope="session")
def perturbed_micro(micro_target) -> TargetModel:
    return _perturbed(micro_target, 0.05, 2, "micro-perturbed")


@pytest.fixture(scope="session")
def smollm2() -> TargetModel:
    return load_target("smollm2-135m", device="cpu", dtype="float32")


class RandomDrafter(Drafter):
    """Adversarial drafter: random tokens from a spiky random distribution over `candidates` (ignores context).

    It samples exactly from the `probs` it reports, so verification must stay lossless whatever it proposes.
    """

    name = "random"

    def __init__(self, candidates: list[int], vocab_size: int, seed: int = 0, concentration: float = 0.3):
        self.candidates = torch.tensor(candidates, dtype=torch.long)
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)
        self.concentration = concentration

    def propose(self, request: DraftRequest) -> DraftProposal:
        rows, width = len(request.tokens), max(request.max_lengths)
        alpha = torch.full((len(self.candidates),), self.concentration, dtype=torch.float64)
        gamma = torch._standard_gamma(alpha.expand(rows, width, -1).contiguous(), generator=self.generator)
        weights = gamma / gamma.sum(-1, keepdim=True)
        probs = torch.zeros(rows, width, self.vocab_size, dtype=torch.float64)
        probs[..., self.candidates] = weights
        tokens = sample(probs, self.generator)
        return DraftProposal(tokens=tokens, lengths=torch.tensor(request.max_lengths), probs=probs)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the `dspark` console entry point in-process; return (exit code, stdout, stderr)."""
    from dspark_cli import main

    saved = sys.argv
    sys.argv = ["dspark", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class WithConfidences(Drafter):
    """Any drafter plus a confidence per drafted position that depends on the token before it (the anchor for
    position 1), as a confidence head's does: c_k = f(x_{k-1}), spread over (0.05, 0.95) so that scheduled
    verification lengths vary from round to round and with what was drafted."""

    def __init__(self, inner: Drafter):
        self.inner = inner
        self.name = f"{inner.name}+confidence"
        self.feature_layers = inner.feature_layers
        self.needs_last_hidden = inner.needs_last_hidden

    def begin(self, prompts):
        self.inner.begin(prompts)

    def end(self):
        self.inner.end()

    def propose(self, request: DraftRequest) -> DraftProposal:
        proposal = self.inner.propose(request)
        anchors = torch.tensor([history[-1] for history in request.tokens], dtype=torch.long)
        previous = torch.cat([anchors[:, None], proposal.tokens[:, :-1].cpu()], dim=1)[:, : proposal.tokens.shape[1]]
        proposal.confidences = 0.05 + 0.9 * ((previous * 2654435761) % 1000).double() / 1000
        return proposal
