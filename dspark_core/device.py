"""Device and dtype selection: CUDA with bf16 when present, CPU float32 otherwise; for the stages that write
training data, bf16 also on CPUs that multiply bf16 matrices natively."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch

from dspark_core.errors import DsparkError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when available, else CPU; anything else is taken as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DsparkError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DsparkError(f"device {device!r} was requested but CUDA is not available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, *, for_data: bool = False) -> torch.dtype:
    """`None`/"auto" gives bfloat16 on CUDA and float32 on CPU; with `for_data`, `data_dtype(device)`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if for_data:
            return data_dtype(device)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise DsparkError(f"unknown dtype {dtype!r}; choose one of {sorted(set(_DTYPES))} or 'auto'") from None


#: help text of every front end's option for the data stages' precision (CLI, Dagster resource, benchmark)
DATA_DTYPE_HELP = ("The target's precision while it writes training data (prompts, responses, feature cache): auto "
                   "(bfloat16 on CUDA and on CPUs whose bfloat16 matrix products measure at least twice as fast as "
                   "float32, else float32), float32, bfloat16, ...")

#: how much faster than float32 a bfloat16 matrix product must be for `data_dtype` to pick bfloat16 on a CPU
BF16_SPEEDUP_NEEDED = 2.0


@functools.cache
def cpu_bfloat16_speedup() -> float:
    """How many times faster this CPU multiplies bfloat16 matrices than float32 ones, timed on a product of
    the size a small target's layers compute (AMX or AVX-512 BF16 units give 3-7x; without them bfloat16 is
    emulated and slower). Measured once per process (tens of milliseconds)."""
    a32, b32 = torch.randn(256, 576), torch.randn(576, 1536)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = a32.to(dtype), b32.to(dtype)
        a @ b  # warm-up: kernel selection
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(4):
                a @ b
            best = min(best, time.perf_counter() - started)
        seconds[dtype] = best
    return seconds[torch.float32] / seconds[torch.bfloat16]


@functools.cache
def cpu_bfloat16_native() -> bool:
    """Does this CPU have bfloat16 matrix instructions (AVX-512 BF16 or AMX)? Read from /proc/cpuinfo's flags,
    not timed: a fixed property of the machine, so a training run resumed on it makes the same choice.
    DSPARK_CPU_BFLOAT16=0 or 1 overrides what the flags say (the test suite pins 0: its tolerances are float32's)."""
    override = os.environ.get("DSPARK_CPU_BFLOAT16")
    if override in ("0", "1"):
        return override == "1"
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def data_dtype(device: torch.device) -> torch.dtype:
    """The target's precision while it writes training data (self-generated prompts, responses, feature cache):
    bfloat16 on CUDA, and on a CPU whose bfloat16 matrix products are at least `BF16_SPEEDUP_NEEDED` times as
    fast as float32 ones (2-3x the tokens/s of those stages on a 2-core AMX machine); float32 otherwise.
    Decoding keeps `resolve_dtype`'s choice: float32 on CPU, where speculative greedy output must equal
    autoregressive greedy output bit for bit. Training data only needs the target's behaviour, which
    bfloat16 keeps except at near-ties of its logits."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_bfloat16_speedup() >= BF16_SPEEDUP_NEEDED:
        return torch.bfloat16
    return torch.float32
