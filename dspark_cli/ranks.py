"""`--nproc N` on the commands that scale out: the same command line again, as N ranks under torchrun."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from dspark_core.distributed import launch, launched_by_torchrun

NPROC_HELP = ("Run as N processes (ranks) under torchrun on this machine: one per GPU (NCCL), or several on a CPU "
              "(gloo). Default: this process alone. Under your own `torchrun ... -m dspark_cli ...` leave it out.")


def nproc_option() -> Optional[int]:
    return typer.Option(None, "--nproc", help=NPROC_HELP)


def relaunched(nproc: int | None) -> bool:
    """With `--nproc N` outside torchrun: run this very command line (without --nproc) as N ranks, wait for them,
    and return True (the caller is done). Otherwise False: this process does the work itself."""
    if nproc is None or launched_by_torchrun():
        return False
    launch("dspark_cli", without_nproc(sys.argv[1:]), nproc)
    return True


def without_nproc(arguments: list[str]) -> list[str]:
    out, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            out.append(argument)
    return out
