"""Several processes, one job: torch.distributed as launched by `torchrun` (one process per rank).

`process_group` joins the group torchrun describes in the environment (gloo on CPU, NCCL on CUDA) and yields
the `World` this process is part of; without torchrun it yields a world of one, so every stage runs the same
code alone or across ranks. `launch` starts N ranks of a `python -m ...` command under torchrun's own launcher
and turns a failed rank into one error line naming it. Multi-node runs need `$DSPARK_HOME` on storage every
node reads (the feature cache, and the training state rank 0 writes).
"""

from __future__ import annotations

import os
import signal
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from dspark_core.errors import DsparkError
from dspark_core.paths import exclusive_writer

T = TypeVar("T")

#: how long a collective waits for the other ranks before failing (a rank that died is noticed by torchrun first)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a job (rank 0 of 1 when it runs alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over all ranks (the same tensor alone), on the tensor's device."""
        if not self.distributed:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":  # NCCL reduces GPU memory only
            return self.all_reduce_sum(tensor.to(f"cuda:{torch.cuda.current_device()}")).to(tensor.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, value, source: int = 0):
        """Rank `source`'s `value` (any picklable object: a message, a small dict) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=source)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def shard(self, items: list) -> list:
        """This rank's share of `items`: every `size`-th item from position `rank` (stable across reruns)."""
        return items[self.rank :: self.size]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (say, importing a model snapshot), the others after it finished. If rank 0
        fails, every rank fails with its message instead of waiting."""
        if not self.distributed:
            yield
            return
        if self.is_main:
            try:
                yield
            except BaseException as exc:
                self.broadcast(_shared_error(exc))
                raise
            self.broadcast(None)
        else:
            _raise_shared(self.broadcast(None), self.rank)
            yield

    def on_main(self, work: Callable[[], T]) -> T:
        """`work()` run by rank 0 alone (a decision, or a write only one rank may make); its result on every rank,
        and its error raised on every rank, so that no rank waits for an answer that will not come."""
        if not self.distributed:
            return work()
        if self.is_main:
            try:
                result = work()
            except BaseException as exc:
                self.broadcast({"error": _shared_error(exc)})
                raise
            return self.broadcast({"result": result})["result"]
        answer = self.broadcast(None)
        _raise_shared(answer.get("error"), self.rank)
        return answer["result"]

    @contextmanager
    def exclusive(self, directory: Path, what: str) -> Iterator[None]:
        """`paths.exclusive_writer` for a job of any number of ranks: rank 0 holds `directory` for the whole job,
        the other ranks go on once it does (they never take the lock), and all fail with rank 0's message when it
        cannot have it."""
        with ExitStack() as held:
            self.on_main(lambda: held.enter_context(exclusive_writer(directory, what)))
            yield


def _shared_error(exc: BaseException) -> dict:
    """What the other ranks are told of rank 0's error: a refusal (DsparkError) is repeated word for word."""
    refusal = isinstance(exc, DsparkError)
    return {"message": str(exc) if refusal else f"{type(exc).__name__}: {exc}", "refusal": refusal}


def _raise_shared(error: dict | None, rank: int) -> None:
    if error is None:
        return
    if error["refusal"]:
        raise DsparkError(error["message"])  # the same refusal on every rank
    raise DsparkError(f"rank 0 failed ({error['message']}), so rank {rank} stops too")


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another launcher of the env:// convention) started."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def current_world() -> World:
    """The world of the process group this process joined, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def rank_device(device: str | torch.device | None) -> str | torch.device | None:
    """The device a rank computes on: with CUDA under torchrun, `auto` and a bare `cuda` mean this rank's own GPU
    (cuda:LOCAL_RANK); anything else is taken as given."""
    if launched_by_torchrun() and torch.cuda.is_available() and (device is None or str(device) in ("auto", "cuda")):
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


@contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[World]:
    """Join torchrun's process group for the duration of the block (NCCL when this rank computes on CUDA, gloo
    otherwise) and leave it afterwards; outside torchrun, or when a group is already joined, just the world."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield current_world()
        return
    resolved = rank_device(device)
    on_cuda = resolved is not None and torch.device(resolved).type == "cuda" and torch.cuda.is_available()
    if on_cuda:
        torch.cuda.set_device(torch.device(resolved))
    dist.init_process_group(backend="nccl" if on_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise DsparkError(f"--nproc {nproc}: a job needs at least one process; use --nproc 1 or more (one per GPU, "
                          f"or up to the CPU's cores)")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise DsparkError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); one rank per GPU "
                          f"means --nproc {torch.cuda.device_count()} at most")


def launch(module: str, arguments: list[str], nproc: int) -> None:
    """Run `python -m module *arguments` as `nproc` ranks on this machine under torchrun's launcher (standalone
    rendezvous on localhost, no restarts). Returns when every rank succeeded; when one fails, the others are
    stopped and a DsparkError names the first failed rank and its error."""
    check_nproc(nproc)
    # the machine's cores shared out among the ranks (torchrun's own default is one thread each, with a warning)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                                         "-m", module, *arguments])
    # what torchrun's own `run` does for --standalone (config_from_args alone leaves the endpoint unset)
    args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    config, entrypoint, entry_args = config_from_args(args)
    try:
        elastic_launch(config, entrypoint)(*entry_args)
    except ChildFailedError as exc:
        # the launcher stops the other ranks with SIGTERM once one fails: the cause is a rank that ended otherwise
        rank, failure = min(exc.failures.items(),
                            key=lambda item: (item[1].exitcode == -signal.SIGTERM, item[1].timestamp, item[0]))
        raise DsparkError(f"rank {rank} of {nproc} failed: {_failure_text(failure)}; the other ranks were stopped. "
                          f"Fix the cause and run the same command again: a resumable stage continues from its "
                          f"last saved state") from None


def _failure_text(failure) -> str:
    """What a failed rank said (its recorded error), or how it ended (an exit code, a signal)."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    message = str(message or "").strip()
    if failure.exitcode < 0:
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = f"signal {-failure.exitcode}"
        return f"it was killed by {name}"
    if message and "To enable traceback" not in message:
        return message.splitlines()[0]
    return f"it exited with status {failure.exitcode}"


def record_rank_error(exc: BaseException) -> None:
    """Under torchrun, write this rank's error where the launcher reads it (`launch` reports it by rank), in the
    launcher's error-file format."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time
    import traceback

    text = str(exc) if isinstance(exc, DsparkError) else f"{type(exc).__name__}: {exc}"
    data = {"message": {"message": text, "extraInfo": {"py_callstack": "".join(traceback.format_exception(exc)),
                                                       "timestamp": str(int(time.time()))}}}
    with open(path, "w") as handle:
        json.dump(data, handle)
