"""A draft trained by several ranks: replicated (DDP) or sharded (FSDP2), with gradient accumulation so that a
step covers the same global batch whatever the number of ranks.

The frozen target weights a draft borrows (embedding, LM head) are buffers, not parameters: no optimizer on any
rank sees them, DDP does not broadcast them, FSDP2 does not shard them. The training state on disk is always the
full, unsharded one, so a run saved by N ranks resumes on M.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from dspark_core.distributed import World
from dspark_core.errors import ConfigError
from dspark_core.settings import check_settings, setting

STRATEGIES = ("ddp", "fsdp")
#: DraftModule buffers that hold the target's frozen weights (identical on every rank; never synchronised)
FROZEN_BUFFERS = ("embed_weight", "lm_head_weight")


@dataclass(frozen=True)
class ParallelConfig:
    """How the ranks of a training job share the work. Not part of a run's identity: the same settings train the
    same draft (within float tolerance) on any number of ranks, and a run may resume on another number."""

    strategy: str = setting("ddp", "How ranks hold the draft: 'ddp' (a full copy each, gradients averaged) or "
                                   "'fsdp' (FSDP2: parameters, gradients and optimizer state sharded over the "
                                   "ranks, for drafts too large to replicate)", choices=STRATEGIES)
    micro_batch_size: int | None = setting(None, "Sequences per forward pass on one rank; gradients accumulate until "
                                                 "the step's batch_size sequences (over all ranks) are in. Empty: "
                                                 "batch_size / ranks (no accumulation)", min=1)

    def __post_init__(self) -> None:
        check_settings(self)

    def plan(self, batch_size: int, world: World) -> tuple[int, int]:
        """(sequences per rank and step, sequences per forward pass) for a global batch of `batch_size`."""
        if batch_size % world.size:
            raise ConfigError(f"a batch of {batch_size} sequences does not split evenly over {world.size} ranks; "
                              f"choose a batch size that is a multiple of {world.size} (e.g. --batch-size "
                              f"{(batch_size // world.size + 1) * world.size}) or another number of ranks")
        per_rank = batch_size // world.size
        return per_rank, min(per_rank, self.micro_batch_size or per_rank)


def distribute(model: nn.Module, world: World, config: ParallelConfig) -> nn.Module:
    """The module each rank calls for its training forward: `model` itself alone, wrapped in DDP, or sharded in
    place by FSDP2 as one unit (parameters gathered for the forward and backward, sharded at rest: gradients and
    optimizer state, two thirds of training memory, stay sharded). One unit because DSpark's layers project the
    context's keys and values outside their own forward, where a per-layer unit would still be sharded."""
    if not world.distributed:
        return model
    if config.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(FROZEN_BUFFERS))
    device_ids = [model.draft_vocab.device.index] if model.draft_vocab.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def accumulating(wrapped: nn.Module, last: bool):
    """Around one micro-batch's forward and backward: gradients are reduced across ranks only after the last."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel) and not last:
        with wrapped.no_sync():
            yield
        return
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(last)
    yield


def sharded(wrapped: nn.Module) -> bool:
    return hasattr(wrapped, "set_requires_gradient_sync")


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (under FSDP2 clipping returns a distributed one)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state(model: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state by parameter name), full and on the CPU, on rank 0 (on the other ranks of a
    sharded run: empty; every rank must call it, it gathers)."""
    if sharded(wrapped):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(wrapped, options=options)
        optimizer_state = get_optimizer_state_dict(wrapped, optimizer, options=options).get("state", {})
        return model_state, optimizer_state
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer_state = {names[id(param)]: optimizer.state[param] for group in optimizer.param_groups
                       for param in group["params"] if param in optimizer.state}
    return model.state_dict(), optimizer_state


def load_full_state(model: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Put a full state (as `full_state` returns it, read from disk by every rank) into the possibly sharded
    model and optimizer."""
    if sharded(wrapped):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(wrapped, model_state, options=options)
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [names[id(p)] for p in group["params"]]}
                  for group in optimizer.param_groups]
        set_optimizer_state_dict(wrapped, optimizer, {"state": optimizer_state, "param_groups": groups}, options=options)
        return
    model.load_state_dict(model_state, strict=True)
    params = dict(model.named_parameters())
    for name, fields in optimizer_state.items():
        param = params[name]
        optimizer.state[param] = {key: value.to(param.device) if torch.is_tensor(value) else value
                                  for key, value in fields.items()}
