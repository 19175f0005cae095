"""Launchpad config of every asset and check. Defaults run on CPU on the packaged SmolLM2 in minutes;
every field's description shows in the Dagster UI."""

import dagster as dg
from pydantic import Field


class PromptDatasetConfig(dg.Config):
    dataset: str = Field(default="selfgen", description="Dataset name: a folder under $DSPARK_HOME/data")
    source: str = Field(default="", description="'self' (the base model writes user requests itself, offline), a .jsonl "
                                                 "file of prompts, or 'hf:NAME_OR_PATH' (Hugging Face datasets); empty: "
                                                 "the source registered with the model (`dspark models register SPEC "
                                                 "--prompts SOURCE`), else 'self'")
    count: int = Field(default=96, description="For source 'self': how many prompts to generate")
    limit: int | None = Field(default=None, description="Keep at most this many prompts (any source)")
    validation_fraction: float = Field(default=0.12, description="Share held out from training by content hash; "
                                                                 "speculative_eval decodes these prompts")
    seed: int = Field(default=0, description="Seed of prompt generation")


class TargetResponsesConfig(dg.Config):
    max_new_tokens: int = Field(default=128, description="Longest response the base model writes per prompt")
    batch_size: int = Field(default=16, description="Prompts answered together")
    seed: int = Field(default=0, description="Sampling seed (the model's recommended sampling settings are used)")


class FeatureCacheConfig(dg.Config):
    layer_ids: list[int] = Field(default_factory=list, description="Decoder layers to cache; empty: `num_layers` spread over the depth")
    num_layers: int = Field(default=5, description="How many layers to spread when layer_ids is empty")
    dtype: str = Field(default="bfloat16", description="Storage dtype: bfloat16, float16 or float32")
    max_length: int = Field(default=1024, description="Truncate conversations to this many tokens")


class DraftTrainingConfig(dg.Config):
    steps: int = Field(default=300, description="Optimizer steps")
    batch_size: int = Field(default=4, description="Sequences per step")
    learning_rate: float = Field(default=6e-4, description="Peak AdamW learning rate (warmup, then cosine decay)")
    block_size: int = Field(default=7, description="γ: draft tokens proposed per round")
    head: str = Field(default="markov", description="DSpark sequential head: markov, gated or rnn (ignored by dflash/eagle3)")
    draft_vocab_size: int = Field(default=8192, description="Draft vocabulary: the most frequent training tokens")
    seed: int = Field(default=0, description="Seed of initialization and data order")


class ExportConfig(dg.Config):
    format: str = Field(default="speculators", description="'speculators' (vLLM speculators layout) or 'hf' (Hugging Face style)")


class SpeculativeEvalConfig(dg.Config):
    benchmark: str = Field(default="held-out", description="Benchmark name recorded with the metrics")
    max_prompts: int = Field(default=12, description="Held-out (validation-split) prompts to decode")
    max_new_tokens: int = Field(default=64, description="Tokens generated per prompt")
    temperature: float = Field(default=0.0, description="0 = greedy; > 0 samples (still exactly the target's distribution)")


class LosslessCheckConfig(dg.Config):
    prompts: int = Field(default=3, description="Held-out prompts decoded greedily both ways")
    max_new_tokens: int = Field(default=32, description="Tokens generated per prompt")


class ChampionCheckConfig(dg.Config):
    tau_margin: float = Field(default=0.02, description="Fail when τ is below the champion's τ by more than this")
