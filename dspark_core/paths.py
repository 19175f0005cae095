"""The one home directory everything the platform writes goes under ($DSPARK_HOME)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_HOME = Path.home() / ".dspark"


def dspark_home() -> Path:
    """`$DSPARK_HOME` if set, else `~/.dspark`. Created on first use."""
    home = Path(os.environ.get("DSPARK_HOME", DEFAULT_HOME)).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    path = dspark_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def directory_mib(path: Path) -> float:
    """Size of the files under `path`, in MiB (2 decimals)."""
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 2)


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON via a temp file + rename so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp directory next to `final`; move it into place only if the block succeeds.

    Without `replace`, an existing `final` wins (another process got there first) and the new copy is
    discarded. With `replace`, an existing `final` is swapped out (renamed to `<name>.old`, then removed);
    `recover_directory` finishes a swap interrupted between the two renames.
    """
    if final.is_symlink():  # replacing it would replace the link, and leave what it points to half-handled
        from dspark_core.errors import DsparkError

        raise DsparkError(f"{final} is a symbolic link (to {os.readlink(final)}); give the directory it points to, "
                          f"or another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        recover_directory(final)  # an earlier replacement killed between its two renames
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not final.exists():
        os.replace(tmp, final)
    elif not replace:
        shutil.rmtree(tmp)
    else:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        os.replace(tmp, final)
        shutil.rmtree(old)


@contextmanager
def exclusive_writer(directory: Path, what: str) -> Iterator[None]:
    """Hold `directory` for one writer at a time (another terminal, the CLI next to a Dagster run): a second
    writer is refused at once with a message naming the holder (process id, command, since when), instead of
    both writing the same files. The lock is a file beside the directory; the operating system releases it if
    the holder dies. The holder's description is a second file beside it, written once the lock is held."""
    import sys
    from datetime import datetime, timezone

    from filelock import FileLock, Timeout

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory.parent / f".{directory.name}.lock")
    holder_file = directory.parent / f".{directory.name}.holder.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        from dspark_core.errors import DsparkError

        raise DsparkError(f"another process{_holder(holder_file)} is {what} in {directory} right now; wait for it to "
                          f"finish (or stop it), then run again to resume") from None
    try:
        write_json_atomic(holder_file, {"pid": os.getpid(), "command": " ".join(sys.argv) or sys.executable,
                                        "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def _holder(holder_file: Path) -> str:
    """' (pid N, `command`, since T)' from the holder's description, or '' when it has none yet."""
    from dspark_core.schemas import FileShapeError, LockHolderFile, read_json

    try:
        holder = read_json(holder_file, LockHolderFile, fix="")
        return f" (pid {holder['pid']}, `{holder['command']}`, since {holder['since']})"
    except FileShapeError:
        return ""


def settled_directory(final: Path) -> Path:
    """`final`, or the complete previous copy beside it when a replacement was killed between its two renames
    (readers use this; the next writer puts the copy back with `recover_directory`)."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    return old if not final.exists() and old.is_dir() else final


def remove_stale_temporaries(final: Path) -> None:
    """Remove the temp directories of writers of `final` that were killed before moving theirs into place. Only
    call it while holding `exclusive_writer(final)`: a live writer's temp directory looks the same."""
    prefix = f".{Path(final).name}."
    for stale in Path(final).parent.glob(f"{prefix}*.tmp"):
        if "." not in stale.name[len(prefix):-len(".tmp")]:  # not the temporary of a sibling named `<name>.<x>`
            shutil.rmtree(stale, ignore_errors=True)


def recover_directory(final: Path) -> None:
    """Undo a replacement that stopped after moving the old directory aside but before moving the new one in."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        old.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, with a full disk (or quota) raised as the OSError it is, so that it is reported
    as one ("the disk is full ...; free space and run again") rather than as a serialization error."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:  # "Error while serializing: I/O error: No space left on device (os error 28)"
        code = re.search(r"os error (\d+)", str(exc))
        if code is None or int(code.group(1)) not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
