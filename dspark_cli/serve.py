"""`dspark serve`: vLLM's OpenAI-compatible server for a target, with its champion draft (or a given one) as the
speculative model."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.output import literal
from dspark_core.errors import DsparkError

console = Console(soft_wrap=True)
LOCALHOST = ("127.0.0.1", "localhost", "::1")


def serve_command(
    target: str = typer.Option(..., "--target", help="Target model spec (alias, HF id, directory, .gguf)."),
    drafter: str = typer.Option("champion", "--drafter", help="champion[:BASE_MODEL] (MLflow registry), a draft "
                                "directory (speculators export, other export or checkpoint), or none."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; another than localhost exposes the "
                             "model to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    gamma: Optional[int] = typer.Option(None, "--gamma", min=1, help="Drafts per round (default: the draft's)."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="The model name clients ask "
                                                    "for (default: --target as given)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="vLLM's dtype (default: float32 on CPU, bfloat16 on a "
                                        "GPU: how `dspark generate` decodes)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=16, help="Context length (default: "
                                                "the target's)."),
    kv_cache_gib: Optional[float] = typer.Option(None, "--kv-cache-gib", min=0.1, help="Memory of the KV cache "
                                                 "(default: 4 on CPU, where vLLM would otherwise reserve 92% of RAM; "
                                                 "vLLM's own share of GPU memory on a GPU)."),
    vllm_args: list[str] = typer.Option([], "--vllm-arg", help="Passed to `vllm serve` as is; repeat it, e.g. "
                                        "--vllm-arg=--max-num-seqs=8."),
    vllm_python: Optional[str] = typer.Option(None, "--vllm-python", help="A Python with vLLM (default: "
                                              "$DSPARK_VLLM_PYTHON, else the project's .venv-vllm)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store of the champion (default: "
                                               "$MLFLOW_TRACKING_URI, else the one under $DSPARK_HOME)."),
    log: Optional[Path] = typer.Option(None, "--log", help="vLLM's log file (default: "
                                       "$DSPARK_HOME/serving/logs/<name>-<port>.log)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything and print the vLLM command; start nothing."),
) -> None:
    """Serve --target with vLLM behind an OpenAI-compatible API, drafting with its champion (or --drafter).

    Greedy output is the target's own; the draft only makes it faster. What vLLM cannot serve on its device is
    refused before it starts (DSpark drafts on vLLM's CPU build). Ctrl-C stops the server.
    """
    from dspark_core.models.snapshot import resolve_snapshot
    from dspark_core.models.spec import slugify
    from dspark_core.paths import dspark_home
    from dspark_core.serving.vllm import (
        ServeConfig,
        VllmServer,
        check_port_free,
        read_served_draft,
        refusal,
        require_vllm_python,
        serve_argv,
        speculators_export,
        vllm_platform,
    )

    snapshot = resolve_snapshot(target)
    draft, draft_label = None, "none (autoregressive)"
    if drafter != "none":
        if drafter == "champion" or drafter.startswith("champion:"):
            from dspark_cli.drafts import champion_path

            source = champion_path(drafter.partition(":")[2] or slugify(target), tracking_uri)
        else:
            source = Path(drafter)
            if not source.is_dir():
                raise DsparkError(f"--drafter {drafter!r} is not champion, none or a draft directory")
        draft = read_served_draft(speculators_export(source))
        if draft.target_revision != snapshot.revision:
            raise DsparkError(f"the draft {source} was trained against another revision of the target than "
                              f"{target!r} resolves to ({draft.target_revision[:12]} vs {snapshot.revision[:12]}); "
                              f"serve it with the target it was trained for, or train a draft for this one")
        draft_label = f"{draft.algorithm}, γ={gamma or draft.gamma} ({source})"
    python = require_vllm_python(vllm_python)
    platform = vllm_platform(python)
    if draft is not None and (reason := refusal(draft, platform)):
        raise DsparkError(reason)
    name = served_model_name or target.strip()
    config = ServeConfig(host=host, port=port, served_model_name=name, dtype=dtype, gamma=gamma,
                         max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                         extra_args=list(vllm_args))
    argv = serve_argv(python, snapshot.path, draft, config, platform)
    log_path = log or dspark_home() / "serving" / "logs" / f"{slugify(name)}-{port}.log"
    server = VllmServer(argv, log_path, host=host, port=port, env={"HF_HUB_OFFLINE": "1"})
    if dry_run:
        typer.echo(server.command)
        return
    if host not in LOCALHOST:
        console.print(f"[yellow]warning:[/] listening on {literal(host)}: anyone who reaches this machine can query "
                      f"the model (no authentication)")
    check_port_free(host, port)
    console.print(f"starting vLLM ({platform}) for {literal(target)} · draft {literal(draft_label)} · log "
                  f"{literal(str(log_path))}")
    # Ctrl-C, and a service manager's SIGTERM, stop vLLM in order (also where a background shell ignored SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.default_int_handler(signal.SIGINT, None))
    try:
        server.start()
        console.print(_how_to_query(server.url, name), highlight=False)
        code = server.wait()
        raise DsparkError(f"vLLM stopped with status {code} (its log: {log_path})")
    except KeyboardInterrupt:
        console.print("stopping vLLM ...")
    finally:
        server.stop()


def _how_to_query(url: str, name: str) -> str:
    return (f"[bold green]serving[/] {literal(name)} at {url}/v1 (OpenAI API) · Ctrl-C stops it\n"
            f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d "
            f"'{{\"model\": \"{literal(name)}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}], "
            f"\"max_tokens\": 64, \"temperature\": 0}}'\n"
            f"  spec-decode counters: curl -s {url}/metrics | grep spec_decode\n"
            f"  training data from it: dspark data regenerate ... --server {url}")
