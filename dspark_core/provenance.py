"""What every result file records about where it came from: the command, code version and commit, machine."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

import dspark_core


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed copy, a machine without git)


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line (`dspark eval --target ...`), quoted for a shell."""
    argv = sys.argv if argv is None else argv
    return " ".join(shlex.quote(a) for a in [Path(argv[0]).name, *argv[1:]])


def provenance() -> dict:
    """code_version, git_commit (with `dirty` when the working tree differs from it) and the machine."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "code_version": dspark_core.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
