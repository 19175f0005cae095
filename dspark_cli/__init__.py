"""The `dspark` command line."""

from __future__ import annotations

import errno
import os
import signal
import sys
import warnings

import click
import typer
from rich.console import Console

from dspark_cli.calibrate import calibrate_command
from dspark_cli.data import data_app
from dspark_cli.drafts import drafts_app
from dspark_cli.eval import eval_command
from dspark_cli.export import export_command
from dspark_cli.generate import generate_command
from dspark_cli.models import models_app
from dspark_cli.output import literal
from dspark_cli.profile import profile_command
from dspark_cli.serve import serve_command
from dspark_cli.sql import sql_command
from dspark_cli.sweep import sweep_command
from dspark_cli.train import train_command
from dspark_cli.transfer import transfer_command
from dspark_core.distributed import record_rank_error
from dspark_core.errors import DsparkError
from dspark_core.schemas import UnknownFieldsWarning

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Train and evaluate speculative-decoding draft modules.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(drafts_app, name="drafts")
app.command("generate")(generate_command)
app.command("serve")(serve_command)
app.command("train")(train_command)
app.command("export")(export_command)
app.command("calibrate")(calibrate_command)
app.command("eval")(eval_command)
app.command("transfer")(transfer_command)
app.command("context-sweep")(sweep_command)
app.command("profile")(profile_command)
app.command("sql")(sql_command)


#: the signal that interrupted the command, if one did (typer turns the KeyboardInterrupt it raises into an exit
#: code, which would otherwise tell Ctrl-C and SIGTERM apart from nothing)
_received: list[int] = []


def _interrupt(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _interrupted() -> None:
    """An interrupted command exits non-zero (130 for Ctrl-C, 143 for SIGTERM, the shell's 128 + signal), so that
    `dspark train ... && dspark export ...` stops there, and says that rerunning it resumes."""
    signum = _received[0] if _received else signal.SIGINT
    command = " ".join(sys.argv[1:3]) or "the command"
    Console(stderr=True, soft_wrap=True).print(
        f"[bold yellow]interrupted[/] ({'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}): `dspark "
        f"{literal(command)}` did not finish. What it wrote completely is kept; run the same command again to resume",
        highlight=False)
    sys.exit(128 + int(signum))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning about the user's files (fields this version ignores) as one line of its own; others as Python
    shows them."""
    if issubclass(category, UnknownFieldsWarning):
        Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/] {literal(message)}", highlight=False)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    """Console-script entry: user errors print one clear line and exit 2, without a traceback; an interruption
    (Ctrl-C, SIGTERM: schedulers and Kubernetes send it) exits 130 / 143 and says how to resume."""
    signal.signal(signal.SIGINT, _interrupt)
    warnings.showwarning = _show_warning
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # a rank: torchrun's SIGTERM stops it after another rank failed,
        signal.signal(signal.SIGTERM, _interrupt)  # and the launcher names the rank that failed first
    try:
        code = app(standalone_mode=False)  # an exit code (typer's for Ctrl-C: 130), or the command's return value
    except KeyboardInterrupt:
        _interrupted()
    except DsparkError as exc:
        record_rank_error(exc)  # under torchrun: what the launcher reports for this rank
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {literal(str(exc))}", highlight=False)
        sys.exit(2)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR):
            # a path the user chose (an --out, a --db, a home directory) that cannot be written or read
            Console(stderr=True, soft_wrap=True).print(
                f"[bold red]error:[/] cannot use {literal(str(exc.filename or 'a path'))}: {literal(exc.strerror or str(exc))}; "
                f"choose a path you can write (or fix its permissions) and run the command again", highlight=False)
            sys.exit(2)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            record_rank_error(exc)
            raise
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error:[/] the disk is full ({literal(str(exc))}); free some space and run the same command again: "
            f"what was written completely is kept and the rest resumes", highlight=False)
        sys.exit(2)
    except (typer.Abort, click.exceptions.Abort) as exc:  # click turns Ctrl-C at a prompt into Abort
        if _received or isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            _interrupted()
        sys.exit(1)
    except typer.Exit as exc:  # pragma: no cover - typer control flow
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:
        # usage errors (a bad option value, a value out of range): typer's own, or click's where typer uses it
        if isinstance(exc, (typer.TyperException, click.exceptions.ClickException)) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        record_rank_error(exc)
        raise
    if _received:
        _interrupted()
    if isinstance(code, int) and code != 0:
        sys.exit(code)
