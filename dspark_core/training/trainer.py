"""The training loop for DSpark / DFlash / Eagle3 drafts on a target feature cache.

AdamW with linear warmup and cosine decay, gradient clipping, bf16 autocast on CUDA and on CPUs with bfloat16
matrix instructions (float32 elsewhere; `autocast` chooses).
Resumable: every `checkpoint_every` steps the model, optimizer and data position are saved atomically; a rerun
with the same output directory continues from there and reaches the same final weights as an uninterrupted
run. A non-finite loss stops training with a clear message; the last good state is kept.

Under torchrun the same loop runs on every rank (`training.parallel`): one global data order, each rank a
share of every global batch, gradients accumulated over micro-batches and summed over ranks, so a step means
the same batch on any number of ranks and a run resumes on another number.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from dspark_core.data.feature_cache import CacheBatch, FeatureCache, tokenizer_hash
from dspark_core.device import cpu_bfloat16_native
from dspark_core.distributed import World, current_world
from dspark_core.drafters.base import DraftModule
from dspark_core.drafters.checkpoint import attach_target_weights, save_draft
from dspark_core.drafters.registry import ALGORITHMS, drafter_kind
from dspark_core.drafters.vocab import coverage, select_draft_vocab
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.paths import recover_directory
from dspark_core.schemas import FileShapeError, TrainingStateFile, TrainLogLine, parse_line, read_json
from dspark_core.settings import DEFAULT_BLOCK_SIZE, check_settings, setting
from dspark_core.training.anchors import block_targets, sample_anchors
from dspark_core.training.losses import LossNormalizers, LossTerms, LossWeights, TargetDistribution, draft_losses
from dspark_core.training.parallel import (
    ParallelConfig,
    accumulating,
    distribute,
    full_norm,
    full_state,
    load_full_state,
    sharded,
)
from dspark_core.training.state import DAMAGED_STATE, load_training_state, save_training_state
from dspark_core.training.validation import held_out_acceptance
from dspark_core.training.warm_start import load_parent_weights, read_parent

#: rows of the target's LM head computed at once (bounds the [rows, vocabulary] temporaries)
TARGET_ROWS_PER_CHUNK = 1024


class TrainingDivergedError(DsparkError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """How a draft is trained, and the shape of the module. Stored in the checkpoint."""

    algorithm: str = setting("dspark", f"Draft algorithm: {', '.join(ALGORITHMS)}", choices=ALGORITHMS)
    steps: int = setting(1200, "Optimizer steps", min=1)
    batch_size: int = setting(4, "Sequences per step", min=1)
    anchors_per_sequence: int = setting(16, "Anchors (draft blocks) sampled per sequence and step", min=1)
    max_length: int = setting(512, "Tokens per training sequence (longer ones are cut)", min=2)
    learning_rate: float = setting(6e-4, "Peak AdamW learning rate (linear warmup, then cosine decay)", above=0)
    warmup_steps: int = setting(20, "Linear warmup steps", min=0)
    warmup_ratio: float | None = setting(None, "Linear warmup as a share of the steps (replaces warmup_steps when "
                                               "set; the reference recipe warms up over 4%)", min=0, max=1)
    weight_decay: float = setting(0.01, "AdamW weight decay of matrices", min=0)
    adam_beta1: float = setting(0.9, "AdamW β1", min=0, below=1)
    adam_beta2: float = setting(0.95, "AdamW β2 (PyTorch's default and the reference's: 0.999)", min=0, below=1)
    grad_clip: float = setting(1.0, "Gradient norm clip", above=0)
    loss: LossWeights = setting(help="Loss weights (CE, TV, confidence) and position decay", factory=LossWeights)
    # module shape
    num_layers: int = setting(1, "Draft backbone depth (DSpark/DFlash)", min=1)
    block_size: int = setting(DEFAULT_BLOCK_SIZE, "γ: draft tokens proposed per round", min=1, max=64)
    head: str = setting("markov", "DSpark sequential head: markov, gated or rnn (DFlash and Eagle3 have none)")
    head_rank: int = setting(256, "Rank r of the sequential head", min=1)
    head_vocab: str = setting("draft", "Rows of the head's previous-token embedding: 'draft' (the draft vocabulary "
                                       "plus one shared row; cheap) or 'full' (every target token)", choices=("draft", "full"))
    draft_vocab_size: int = setting(4096, "Draft vocabulary: the most frequent training tokens", min=2)
    #: both speculators-format requirements cost no acceptance (benchmarks/results/ablation-speculators-arch.json)
    mask_token: str = setting("vocab", "DSpark/DFlash block slots after the anchor: the target's embedding of a special "
                                       "token ('vocab', as the speculators format needs) or a 'learned' vector",
                              choices=("learned", "vocab"))
    qk_norm: bool = setting(True, "DSpark/DFlash: RMSNorm on each head's queries and keys (a Qwen3-style layer, as "
                                  "the speculators format needs)")
    anchor_state: bool = setting(False, "DSpark/DFlash: every block slot also reads the target's state before the "
                                        "anchor directly, as Eagle3's input does (not in the speculators format; "
                                        "no gain measured on SmolLM2)")
    #: measured: DFlash drafts τ 1.33 with the anchor slot drafting, 1.25 without (4 min each, SmolLM2;
    #: benchmarks/results/ablation-dflash-fill-in.json), but vLLM's dflash serves only the second layout
    sample_from_anchor: bool | None = setting(None, "DSpark/DFlash: the anchor's block slot drafts the first token "
                                                    "(γ slots); off: γ mask slots after the anchor draft and the anchor "
                                                    "slot does not (γ + 1 slots: the layout vLLM's dflash serves). "
                                                    "Empty: the algorithm's default (DSpark on, DFlash off)")
    #: target layers the draft reads (a subset of the cache's); None = the algorithm's choice from the cache
    layer_ids: tuple[int, ...] | None = setting(None, "Cache layers the draft reads; empty: the algorithm's choice",
                                                min=0, distinct=True)
    init: str = setting("random", "Draft layers start 'random', or as copies of the target's top layers ('target'; "
                                  "DSpark/DFlash on Llama-style targets)", choices=("random", "target"))
    warm_start: str | None = setting(None, "Start from this draft (a checkpoint's `draft` folder or an export): its "
                                           "weights and draft vocabulary; the optimizer and the learning-rate "
                                           "schedule start afresh. Empty: random initialization")
    autocast: str = setting("auto", "Precision of the forward pass: 'bfloat16' autocast (on any device), 'float32', "
                                    "or 'auto': bfloat16 on CUDA and on CPUs with bfloat16 matrix instructions "
                                    "(AVX-512 BF16, AMX: 1.4-1.6x the positions/s at the same held-out tau), "
                                    "float32 on other CPUs",
                            choices=("auto", "bfloat16", "float32"))
    compile: bool = setting(False, "Compile the draft's training forward, backward and loss with torch.compile "
                                   "(inductor): the same losses, +9-23% positions/s over eager bfloat16 on a CPU, "
                                   "after 40-70 s of compilation on a first run; worth it for runs of ten minutes "
                                   "and more. How a run executes, not what it trains: a run may resume either way")
    seed: int = setting(0, "Seed of initialization and data order")
    log_every: int = setting(10, "Log metrics every N steps", min=1)
    checkpoint_every: int = setting(50, "Save the resumable training state every N steps", min=1)

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossWeights(**self.loss)
        kind = drafter_kind(self.algorithm)
        if self.layer_ids is not None:
            self.layer_ids = tuple(self.layer_ids) or None
        if self.warmup_ratio is not None:
            self.warmup_steps = int(self.warmup_ratio * self.steps)
        for name, value in kind.training_defaults.items():  # what the algorithm picks where the user left it empty
            if getattr(self, name) is None:
                setattr(self, name, value)
        fixed = dict(kind.training_settings)  # e.g. DFlash and Eagle3: no sequential head, cross-entropy only
        self.loss = replace(self.loss, **fixed.pop("loss", {}))
        for name, value in fixed.items():
            setattr(self, name, value)
        if self.head not in ("markov", "gated", "rnn", "none"):  # "none" is what DFlash and Eagle3 fix
            raise ConfigError(f"unknown sequential head {self.head!r}; choose markov, gated or rnn")
        check_settings(self)
        check_settings(self.loss)
        if self.warm_start is not None:
            self.warm_start = str(self.warm_start) or None
        if self.init == "target" and self.warm_start:
            raise ConfigError("a warm-started draft takes its parent's weights; leave init at 'random'")
        if self.init == "target" and kind.init_from_target is None:
            raise ConfigError(f"{self.algorithm} drafts cannot start from the target's layers; use init 'random'")

    def to_dict(self) -> dict:
        return asdict(self)


#: settings added after training runs were first saved ("loss.x": a LossWeights field), with the value a saved
#: run without them trained with
SETTINGS_BEFORE_THEY_EXISTED = {"sample_from_anchor": True, "warmup_ratio": None, "adam_beta1": 0.9,
                                "adam_beta2": 0.95, "loss.ce_target": "token", "warm_start": None, "autocast": "auto"}

#: settings of how a run executes, not of what it trains: like the number of ranks, they may change between a run
#: and its resumption (they reorder float arithmetic, no more) and do not tell runs apart
EXECUTION_SETTINGS = ("compile",)


def _flat(settings: dict) -> dict:
    """Settings with the loss weights as "loss.<field>" keys."""
    flat = {key: value for key, value in settings.items() if key != "loss"}
    flat.update({f"loss.{key}": value for key, value in settings.get("loss", {}).items()})
    return flat


def same_settings(saved: dict, config: TrainConfig) -> bool:
    """Whether a saved run's settings are `config`'s. A setting added since the run was saved counts as the same
    when `config` holds the value the older version trained with."""
    current, saved = _flat(json.loads(json.dumps(config.to_dict()))), _flat(saved)
    for name in EXECUTION_SETTINGS:
        current.pop(name, None)
    return all(saved[key] == value if key in saved else value == SETTINGS_BEFORE_THEY_EXISTED.get(key, object())
               for key, value in current.items())


def settings_identity(config: TrainConfig) -> dict:
    """The settings that tell runs apart: all of them but the execution settings, less the settings added since runs
    were first saved that hold the value runs trained with before (so that a run's directory and identity do not
    change with them)."""
    settings = json.loads(json.dumps(config.to_dict()))
    for name in EXECUTION_SETTINGS:
        settings.pop(name, None)
    for key, value in SETTINGS_BEFORE_THEY_EXISTED.items():
        group, _, name = key.rpartition(".")
        holder = settings[group] if group else settings
        if name in holder and holder[name] == value:
            del holder[name]
    return settings


def learning_rate(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def model_layer_ids(cache: FeatureCache, config: TrainConfig) -> tuple[int, ...]:
    """The target layers the draft reads: configured, or the algorithm's choice among the cached ones."""
    wanted = config.layer_ids or drafter_kind(config.algorithm).select_layers(tuple(cache.layer_ids))
    missing = [i for i in wanted if i not in cache.layer_ids]
    if missing:
        raise DsparkError(f"layers {missing} are not in the feature cache {cache.path} (it holds {list(cache.layer_ids)})")
    return tuple(wanted)


def build_model(target: TargetModel, cache: FeatureCache, config: TrainConfig) -> DraftModule:
    """The draft `config` describes for `target`: random (or the target's top layers), or its warm start's
    weights and draft vocabulary; the vocabulary of a fresh draft is the cache's most frequent tokens."""
    parent = read_parent(config.warm_start) if config.warm_start else None
    if parent is None:
        streams = (s.input_ids[s.loss_mask] for s in (cache[i] for i in range(len(cache))))
        vocab = select_draft_vocab(streams, target.vocab_size, config.draft_vocab_size, set(target.eos_token_ids))
        vocab_size = int(vocab.numel())
    else:
        vocab_size = int(parent.config["draft_vocab_size"])
    kind = drafter_kind(config.algorithm)
    module_config = kind.module_config(
        target, num_layers=config.num_layers, block_size=config.block_size, target_layer_ids=model_layer_ids(cache, config),
        head=config.head, head_rank=config.head_rank, head_vocab=config.head_vocab, draft_vocab_size=vocab_size,
        mask_token=config.mask_token, qk_norm=config.qk_norm, anchor_state=config.anchor_state,
        sample_from_anchor=config.sample_from_anchor,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = kind.build(module_config).to(target.device)
    if config.init == "target":
        kind.init_from_target(model, target)
    if parent is not None:
        vocab = load_parent_weights(model, parent, target)
    model.set_draft_vocab(vocab.to(target.device))
    attach_target_weights(model, target)
    return model


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only (the budget timer uses it too). The fused kernel: on CPU it takes a
    step in about 40% of the time of the per-tensor one (9 vs 23 ms of a 120 ms DSpark step on SmolLM2)."""
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), fused=True,
    )


class Batcher:
    """Deterministic, resumable order over the training data: a fresh seeded permutation per epoch. Every rank
    runs the same one and takes its own part of each global batch."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.cursor = 0, 0

    def _order(self) -> list[int]:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)).tolist()

    def next(self) -> list[int]:
        batch = []
        while len(batch) < self.batch_size:
            order = self._order()
            take = order[self.cursor : self.cursor + self.batch_size - len(batch)]
            batch.extend(take)
            self.cursor += len(take)
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
        return batch


def sequence_seed(seed: int, step: int, slot: int) -> int:
    """The seed of the anchors drawn for place `slot` of step `step`'s global batch: the same on whichever rank
    and in whichever micro-batch that sequence is trained."""
    return (seed * 1_000_003 + step) * 65_537 + slot


@dataclass
class MicroBatch:
    """The sequences one rank trains on in one forward pass, with their anchors and supervised block positions."""

    batch: CacheBatch
    anchors: torch.Tensor  # [B, A]
    targets: torch.Tensor  # [B, A, γ] gold tokens
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (sequence, anchor, block position) of supervised slots
    normalizers: LossNormalizers  # this micro-batch's own


def prepare_micro_batch(data, indices: list[int], seeds: list[int], model: DraftModule, config: TrainConfig,
                        device) -> MicroBatch:
    """Collate `indices` of `data` (features at the training precision: bfloat16 on CUDA, float32 on CPU), and
    draw their anchors, each sequence from the generator of its seed."""
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    batch = data.batch(indices, max_length=config.max_length, layer_ids=model.config.target_layer_ids, device=device,
                       dtype=dtype)
    ids, mask, lengths = batch.input_ids, batch.loss_mask, batch.lengths
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    anchors, valid = sample_anchors([m[: int(n)].cpu() for m, n in zip(mask, lengths)], config.anchors_per_sequence,
                                    generators)
    anchors, valid = anchors.to(ids.device), valid.to(ids.device)
    targets, supervised = block_targets(ids, mask, lengths, anchors, valid, model.config.block_size)
    rows = supervised.nonzero(as_tuple=True)
    normalizers = LossNormalizers.of(rows[2], targets[rows], model.draft_vocab, config.loss.decay)
    return MicroBatch(batch, anchors, targets, rows, normalizers)


def training_step(forward: torch.nn.Module, model: DraftModule, target: TargetModel, micro: MicroBatch,
                  config: TrainConfig, normalizers: LossNormalizers) -> LossTerms:
    """The loss terms of one micro-batch, normalized by the whole step's `normalizers`, under bfloat16 autocast when
    `config.autocast` asks for it (by default where the hardware multiplies bfloat16 natively). `forward` is what
    the rank calls (the model, or its DDP/FSDP2 form); `model` the module itself."""
    device = micro.batch.input_ids.device.type
    if uses_autocast(config, device):
        with torch.autocast(device, dtype=torch.bfloat16):
            return _micro_batch_losses(forward, model, target, micro, config, normalizers)
    return _micro_batch_losses(forward, model, target, micro, config, normalizers)


def precision(config: TrainConfig, device_type: str) -> str:
    """The precision a run's forward pass trains in: 'bfloat16' (autocast) or 'float32'."""
    return "bfloat16" if uses_autocast(config, device_type) else "float32"


def check_resumed_precision(saved: dict, config: TrainConfig, device_type: str, out_dir: Path) -> None:
    """A run resumes in the precision it started in: 'auto' resolves by the machine (its device and its CPU's
    bfloat16 instructions), so a saved run moved to other hardware, or saved before 'auto' meant bfloat16 on such
    CPUs, could otherwise continue in another one."""
    # states without the field were saved when 'auto' meant bfloat16 on CUDA only
    before = "bfloat16" if config.autocast == "bfloat16" or (config.autocast == "auto" and device_type == "cuda") \
        else "float32"
    started, now = saved.get("precision", before), precision(config, device_type)
    if started != now:
        raise DsparkError(f"{out_dir} was trained in {started} and would continue in {now} on this machine "
                          f"(autocast {config.autocast!r}); pass --autocast {started} to resume it as it started, or "
                          f"use another output directory")


def uses_autocast(config: TrainConfig, device_type: str) -> bool:
    """Whether training on `device_type` runs its forward pass under bfloat16 autocast ('auto': where the hardware
    multiplies bfloat16 natively; benchmarks/bench_train_precision.py measures what it gives)."""
    if config.autocast != "auto":
        return config.autocast == "bfloat16"
    return device_type == "cuda" or (device_type == "cpu" and cpu_bfloat16_native())


def _micro_batch_losses(forward, model: DraftModule, target: TargetModel, micro: MicroBatch, config: TrainConfig,
                        normalizers: LossNormalizers) -> LossTerms:
    batch, rows, gamma = micro.batch, micro.rows, model.config.block_size
    ids, hidden = batch.input_ids, batch.last_hidden
    regress = config.loss.feature > 0
    logits, confidence, *hidden_out = forward(batch.layers, ids, batch.lengths, micro.anchors, with_hidden=regress)
    # The target's distribution at anchor + k comes from its pre-LM-head state at anchor + k - 1. Blocks overlap,
    # so it is computed once per distinct position (the LM head over the whole vocabulary is the costly part).
    source = (micro.anchors[:, :, None] + torch.arange(gamma, device=ids.device)).clamp_max(ids.shape[1] - 1)
    positions, inverse = torch.unique(rows[0] * ids.shape[1] + source[rows], return_inverse=True)
    # the labels stay in the target's own precision whatever the draft's forward pass runs in
    with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
        distinct = hidden.reshape(-1, hidden.shape[-1])[positions].to(target.dtype)
        if batch.lse is not None:  # the normalizer is known: the draft vocabulary's rows suffice
            target_distribution = TargetDistribution.from_draft_logits(
                target.lm_logits(distinct, model.draft_vocab), batch.lse.reshape(-1)[positions]).index(inverse)
        else:
            reduced = [TargetDistribution.from_logits(target.lm_logits(chunk), model.draft_vocab)
                       for chunk in distinct.split(TARGET_ROWS_PER_CHUNK)]
            target_distribution = TargetDistribution(torch.cat([r.draft_probs for r in reduced]),
                                                     torch.cat([r.outside for r in reduced])).index(inverse)
    losses = compiled_draft_losses() if config.compile else draft_losses
    return losses(
        logits[rows], target_distribution, micro.targets[rows], rows[2], model.draft_vocab, gamma, config.loss,
        None if confidence is None else confidence[rows],
        draft_hidden=hidden_out[0][rows] if regress else None,
        target_hidden=hidden.reshape(-1, hidden.shape[-1])[positions][inverse] if regress else None,
        normalizers=normalizers,
    )


@functools.cache
def compiled_draft_losses() -> Callable[..., LossTerms]:
    """`draft_losses` compiled once per process: its softmaxes and distances over [rows, draft vocabulary] fuse
    into a few loops (the number of rows changes every step: compiled for dynamic shapes)."""
    return torch.compile(draft_losses, dynamic=True)


class DraftTraining:
    """One rank's part of a training run: its model (alone, or in its DDP/FSDP2 form), the optimizer, and the step
    that trains on its share of a global batch, micro-batch by micro-batch, gradients summed over all ranks."""

    def __init__(self, target: TargetModel, data, config: TrainConfig, parallel: ParallelConfig | None = None,
                 world: World | None = None):
        self.target, self.data, self.config = target, data, config
        self.parallel = parallel or ParallelConfig()
        self.world = world or current_world()
        self.per_rank, self.micro_size = self.parallel.plan(config.batch_size, self.world)
        self.model = build_model(target, data, config)
        self.forward = distribute(self.model, self.world, self.parallel)
        if config.compile:  # in place: the wrapper DDP/FSDP2 made stays what `accumulating` recognises
            self.forward.compile(dynamic=None)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.parameters, config)
        self.tokens_last_step = 0
        self.model.train()

    def step(self, step: int, indices: list[int]) -> tuple[LossTerms, float] | None:
        """Train on global batch `indices` (the same list on every rank) as optimizer step number `step` (0-based);
        returns the step's loss terms over the whole batch and the gradient norm, or None when nothing in the
        batch is supervised (no rank takes a step then)."""
        world, config = self.world, self.config
        slots = list(range(world.rank * self.per_rank, (world.rank + 1) * self.per_rank))
        micro_batches = [
            prepare_micro_batch(self.data, [indices[s] for s in part], [sequence_seed(config.seed, step, s) for s in part],
                                self.model, config, self.target.device)
            for part in (slots[i:i + self.micro_size] for i in range(0, len(slots), self.micro_size))
        ]
        # The step's mean is over every supervised slot of the global batch: add up the normalizers first.
        local = torch.stack([m.normalizers.to_tensor() for m in micro_batches]).sum(0)
        tokens = sum(float(m.batch.lengths.sum()) for m in micro_batches)
        totals = world.all_reduce_sum(torch.cat([local, torch.tensor([tokens], device=local.device)]))
        self.tokens_last_step = int(totals[2])  # the global batch's tokens, for the run's accounting
        if not totals[0] > 1e-6:
            return None
        normalizers = LossNormalizers.from_tensor(totals[:2].to(self.target.device))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        self.optimizer.zero_grad(set_to_none=True)
        packed = []
        for number, micro in enumerate(micro_batches):
            with accumulating(self.forward, last=number == len(micro_batches) - 1):
                terms = training_step(self.forward, self.model, self.target, micro, config, normalizers)
                # DDP and FSDP2 average gradients over ranks; the step's loss is their sum
                (terms.total * world.size).backward()
            packed.append(terms.packed())
        terms = LossTerms.unpacked(world.all_reduce_sum(torch.stack(packed).sum(0)))
        if not torch.isfinite(terms.total):
            raise TrainingDivergedError(f"the loss became {float(terms.total)} at step {step + 1}")
        grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(self.parameters, config.grad_clip))
        self.optimizer.step()
        return terms, float(grad_norm)

    def full_state(self) -> tuple[dict, dict]:
        """(model state, optimizer state) in full on rank 0; every rank must call it (a sharded model gathers)."""
        return full_state(self.model, self.forward, self.optimizer)

    def load_state(self, model_state: dict, optimizer_state: dict) -> None:
        load_full_state(self.model, self.forward, self.optimizer, model_state, optimizer_state)
        self.model.set_draft_vocab(self.model.draft_vocab.clone())  # re-slice the LM head for the restored vocabulary

    def final_model(self, model_state: dict) -> DraftModule:
        """The trained draft as a plain module on rank 0, from the gathered `model_state` when it is sharded."""
        if not sharded(self.forward):
            return self.model
        model = build_model(self.target, self.data, self.config)
        model.load_state_dict(model_state, strict=True)
        model.set_draft_vocab(model.draft_vocab.clone())
        return model


def lineage(config: TrainConfig, tokens_trained: int) -> dict:
    """What a draft records of the line it grew from: its parent (None for a first draft), its generation
    (0 for a first draft), and the steps, sequences and tokens trained over the whole line, its own included."""
    parent = read_parent(config.warm_start).lineage() if config.warm_start else None
    before = parent["cumulative"] if parent else {"steps": 0, "sequences": 0, "tokens": 0}
    return {"parent": parent, "generation": parent["generation"] + 1 if parent else 0, "tokens_trained": tokens_trained,
            "cumulative_steps": before["steps"] + config.steps,
            "cumulative_sequences": before["sequences"] + config.steps * config.batch_size,
            "cumulative_tokens": before["tokens"] + tokens_trained}


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    final_metrics: dict
    history: list[dict]


def train_draft(
    target: TargetModel,
    cache: FeatureCache,
    out_dir: Path,
    config: TrainConfig,
    *,
    validation: FeatureCache | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    parallel: ParallelConfig | None = None,
) -> TrainResult:
    """Train a draft on `cache` for `target`, writing `out_dir/state` (resumable) and `out_dir/draft` (final).
    With a `validation` cache (held-out sequences), the final metrics include the draft's greedy acceptance
    on it (`val_tau`, `val_accept_k`).

    Under a process group (torchrun), every rank calls this with the same arguments: each trains on its share
    of every global batch, and rank 0 alone writes the state, the metrics log and the draft, and calls
    `on_log`."""
    if len(cache) == 0:
        raise DsparkError(f"the feature cache {cache.path} has no training samples (empty dataset or split)")
    if cache.manifest["target_revision"] != target.revision:
        raise DsparkError(
            f"feature cache {cache.path} was built for {cache.manifest['target']!r}, not {target.spec!r}; "
            f"build a cache for this target"
        )
    if cache.manifest["tokenizer_hash"] != tokenizer_hash(target.tokenizer):
        raise DsparkError(f"feature cache {cache.path} was made with another tokenizer than {target.spec!r}'s")
    out_dir = Path(out_dir)
    world = current_world()
    with world.exclusive(out_dir, "training a draft"):  # one job per run directory; rank 0 holds it for all ranks
        world.on_main(lambda: _prepare_run_directory(out_dir))
        return _train_draft(target, cache, out_dir, config, validation, on_log, progress, parallel or ParallelConfig(),
                            world)


def _logged_step(line: str) -> float:
    """The step a metrics-log line records; inf for a damaged line (a kill mid-write), which a resume drops."""
    try:
        return parse_line(line, TrainLogLine, where="metrics.jsonl", fix="")["step"]
    except FileShapeError:
        return float("inf")


def _prepare_run_directory(out_dir: Path) -> None:
    """Before any rank reads it: the directory exists, and a state replacement killed half-way is undone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recover_directory(out_dir / "state")


def _train_draft(target, cache, out_dir: Path, config: TrainConfig, validation, on_log, progress,
                 parallel: ParallelConfig, world: World) -> TrainResult:
    """`train_draft` once rank 0 holds the run directory."""
    state_dir, log_path = out_dir / "state", out_dir / "metrics.jsonl"
    run = DraftTraining(target, cache, config, parallel, world)
    batcher = Batcher(len(cache), config.batch_size, config.seed)
    start, history, tokens_trained = 0, [], 0
    if (state_dir / "state.json").exists():
        saved = read_json(state_dir / "state.json", TrainingStateFile, fix=DAMAGED_STATE)
        if not same_settings(saved["config"], config) or saved["cache"] != str(cache.path):
            raise DsparkError(
                f"{out_dir} holds a training run with other settings or data; use another output directory or delete it"
            )
        check_resumed_precision(saved, config, target.device.type, out_dir)
        model_state, optimizer_state, saved = load_training_state(state_dir)
        run.load_state(model_state, optimizer_state)
        start, batcher.epoch, batcher.cursor = saved["step"], saved["epoch"], saved["cursor"]
        history = saved.get("history", [])
        tokens_trained = int(saved.get("tokens_trained", 0))
        if world.is_main and log_path.exists():  # keep the metrics log consistent with the resumed step
            kept = [line for line in log_path.read_text(errors="replace").splitlines() if _logged_step(line) <= start]
            log_path.write_text("".join(line + "\n" for line in kept))

    bar = tqdm(total=config.steps, initial=start, desc=f"training {config.algorithm}",
               disable=not (progress and world.is_main))
    last_good = start
    positions_seen, timer = 0, time.perf_counter()
    for step in range(start, config.steps):
        try:
            outcome = run.step(step, batcher.next())
        except TrainingDivergedError as exc:
            raise TrainingDivergedError(
                f"{exc}; the last good state (step {last_good}) is kept in {state_dir}. Lower the learning rate "
                f"(now {config.learning_rate}) or check the cache") from None
        done = step + 1
        tokens_trained += run.tokens_last_step
        if outcome is not None:
            terms, grad_norm = outcome
            positions_seen += int(terms.counts.sum())
            if done % config.log_every == 0 or done == config.steps:
                elapsed = time.perf_counter() - timer
                metrics = {"step": done, "lr": learning_rate(step, config), "grad_norm": grad_norm,
                           "positions_per_s": positions_seen / elapsed if elapsed else 0.0, **terms.scalars()}
                positions_seen, timer = 0, time.perf_counter()
                history.append(metrics)
                if world.is_main:
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps(metrics) + "\n")
                    if on_log:
                        on_log(done, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", tau=f"{metrics['expected_tau']:.2f}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            model_state, optimizer_state = run.full_state()
            if world.is_main:
                save_training_state(state_dir, model_state, optimizer_state, {
                    "step": done, "epoch": batcher.epoch, "cursor": batcher.cursor, "config": config.to_dict(),
                    "cache": str(cache.path), "history": history, "world_size": world.size,
                    "tokens_trained": tokens_trained, "precision": precision(config, target.device.type),
                })
            last_good = done
        bar.update(1)
    bar.close()

    model_state, _ = run.full_state() if sharded(run.forward) else ({}, {})
    final = dict(history[-1]) if history else {}
    checkpoint = out_dir / "draft"
    if world.is_main:
        model = run.final_model(model_state)
        model.eval()
        if validation is not None and len(validation):
            final.update(held_out_acceptance(model, target, validation, max_length=config.max_length).scalars())
        vocab_coverage = coverage(model.draft_vocab.cpu(), (cache[i].input_ids[cache[i].loss_mask] for i in range(len(cache))))
        save_draft(model, checkpoint, target=target, training={
            **config.to_dict(), "cache": str(cache.path), "cache_samples": len(cache), "steps_done": config.steps,
            "draft_vocab_coverage": vocab_coverage, **{k: v for k, v in final.items() if k.startswith("val_")},
            **lineage(config, tokens_trained),
        })
    world.barrier()  # the draft is on disk before any rank reports success
    return TrainResult(checkpoint=checkpoint, steps=config.steps, final_metrics=final, history=history)
