"""Speculative decoding: the engine, lossless verification, the drafter protocol and built-in drafters."""

from dspark_core.decoding.draft_lm import DraftModelDrafter, check_same_vocabulary
from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.decoding.engine import GenerationConfig, GenerationResult, RequestOutput, SpeculativeEngine
from dspark_core.decoding.metrics import DecodingStats, RoundRecord
from dspark_core.decoding.prompt_lookup import PromptLookupDrafter
from dspark_core.decoding.sampling import SamplingConfig

__all__ = [
    "DecodingStats",
    "DraftModelDrafter",
    "DraftProposal",
    "DraftRequest",
    "Drafter",
    "GenerationConfig",
    "GenerationResult",
    "PromptLookupDrafter",
    "RequestOutput",
    "RoundRecord",
    "SamplingConfig",
    "SpeculativeEngine",
    "check_same_vocabulary",
]
