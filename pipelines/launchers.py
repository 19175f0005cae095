"""Where the heavy stages run: the `launcher` resource.

`in_process` (the default) computes the feature cache and trains drafts inside the Dagster run, as `make run`
does. `subprocess` starts `python -m pipelines.pipes_stage` through Dagster Pipes (`PipesSubprocessClient`): one
process, or `nproc` ranks under torchrun. `kubernetes` starts the same command in a pod through Dagster Pipes
(`PipesK8sClient`), from an image holding dspark, requesting GPUs, with the fields of a pod template (node
selector, tolerations, the volume holding $DSPARK_HOME). Which one runs is configuration, not code: the assets
call `launcher.run(...)` the same way and get back what the child reported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field

from dspark_core.errors import DsparkError

if TYPE_CHECKING:
    from dspark_core.recipes.features import FeatureCacheReport
    from dspark_core.recipes.training import TrainReport

#: the container of the pod that runs the stage (the pod template may add sidecars)
CONTAINER = "dspark-stage"
#: the environment variables that configure the default launcher (a deployment sets them; no code changes)
ENVIRONMENT = {"mode": "DSPARK_LAUNCHER", "nproc": "DSPARK_LAUNCHER_NPROC", "report_every": "DSPARK_LAUNCHER_REPORT_EVERY",
               "image": "DSPARK_LAUNCHER_IMAGE", "namespace": "DSPARK_LAUNCHER_NAMESPACE", "gpus": "DSPARK_LAUNCHER_GPUS",
               "pod_template": "DSPARK_LAUNCHER_POD_TEMPLATE"}


class StageLauncher(dg.ConfigurableResource):
    """Where the feature cache and draft training run: inside the Dagster run, in a child process started through
    Dagster Pipes (under torchrun with `nproc` ranks), or in a Kubernetes pod started through Dagster Pipes."""

    mode: Literal["in_process", "subprocess", "kubernetes"] = Field(
        default="in_process", description="in_process: inside the Dagster run; subprocess: a child process through "
                                          "Dagster Pipes (torchrun when nproc > 1); kubernetes: a pod through Pipes")
    nproc: int = Field(default=1, ge=1, description="Ranks of the stage under torchrun (one per GPU of the machine "
                                                    "or pod; on a CPU, the cores are shared out)")
    report_every: int = Field(default=10, ge=1, description="Report the metrics of a logged training step back when "
                                                            "its number is a multiple of this (the trainer logs every "
                                                            "log_every steps, 10 by default)")
    image: str = Field(default="", description="kubernetes: the image holding dspark (the code location's image)")
    namespace: str = Field(default="", description="kubernetes: the pod's namespace; empty: the current one")
    gpus: int = Field(default=1, ge=0, description="kubernetes: nvidia.com/gpu the pod requests (and its limit)")
    pod_template: str = Field(default="", description="kubernetes: a YAML file of pod spec fields merged under the "
                                                      "stage's container (node selector, tolerations, volumes)")

    @classmethod
    def from_environment(cls) -> "StageLauncher":
        """The launcher the DSPARK_LAUNCHER* variables describe (in process when none is set)."""
        import pydantic

        values = {field: os.environ[name] for field, name in ENVIRONMENT.items() if os.environ.get(name)}
        try:
            return cls(**values)
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            name = ENVIRONMENT.get(str(error["loc"][0]), str(error["loc"][0]))
            raise DsparkError(f"{name}={os.environ.get(name)!r}: {error['msg'].lower()}; see docs/cluster.md for "
                              f"the launcher's settings") from None

    @property
    def in_process(self) -> bool:
        return self.mode == "in_process"

    def command(self, stage: str, python: str | None = None) -> list[str]:
        """The child's command line: the stage module, under torchrun for more than one rank."""
        python = python or sys.executable
        module = ["-m", "pipelines.pipes_stage", stage]
        if self.nproc == 1:
            return [python, *module]
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}",
                "--max-restarts=0", *module]

    def pod_spec(self, stage: str) -> dict[str, Any]:
        """The pod spec the stage runs in: the template's fields, one container running the stage with the GPUs
        requested, never restarted (a failed stage fails the Dagster step, which may retry it)."""
        import yaml

        template: dict[str, Any] = {}
        if self.pod_template:
            path = Path(self.pod_template).expanduser()
            try:
                template = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise DsparkError(f"the launcher's pod_template {path} could not be read as YAML ({exc}); give a "
                                  f"file of pod spec fields (deploy/k8s/stage-pod-template.yaml is one)") from None
            if not isinstance(template, dict):
                raise DsparkError(f"the launcher's pod_template {path} holds {type(template).__name__}, not pod "
                                  f"spec fields; give a mapping (deploy/k8s/stage-pod-template.yaml is one)")
        containers = [dict(c) for c in template.get("containers", [])] or [{}]
        stage_container = {**containers[0], "name": CONTAINER, "image": self.image or containers[0].get("image"),
                           "command": self.command(stage, "python")}
        if self.gpus:
            resources = dict(stage_container.get("resources") or {})
            for kind in ("limits", "requests"):
                resources[kind] = {**(resources.get(kind) or {}), "nvidia.com/gpu": str(self.gpus)}
            stage_container["resources"] = resources
        return {**template, "restartPolicy": "Never", "containers": [stage_container, *containers[1:]]}

    def run(self, context: dg.AssetExecutionContext, stage: str, extras: dict) -> dg.PipesClientCompletedInvocation:
        """Run `stage` with `extras` outside this process and wait for it; what it reported comes back."""
        if self.mode == "subprocess":
            env = {}
            if self.nproc > 1:  # torchrun's own default is one thread per rank
                env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.nproc)))
            context.log.info(f"launching {stage} through Dagster Pipes: {' '.join(self.command(stage))}")
            return dg.PipesSubprocessClient(env=env).run(context=context, command=self.command(stage), extras=extras)
        if self.mode == "kubernetes":
            from dagster_k8s import PipesK8sClient

            if not self.image:
                raise DsparkError("the launcher runs stages on Kubernetes but names no image; set the launcher "
                                  "resource's image to one holding dspark")
            return PipesK8sClient().run(context=context, extras=extras, namespace=self.namespace or None,
                                        base_pod_spec=self.pod_spec(stage))
        raise DsparkError(f"the launcher's mode is {self.mode}: the stage runs inside the Dagster run, not launched")


def _reported(invocation: dg.PipesClientCompletedInvocation, stage: str) -> tuple[dict, list[dict], dict]:
    """(the stage's report, the per-step messages, the materialization metadata) a launched stage sent back."""
    messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
    reports = [m for m in messages if "report" in m]
    if not reports:
        raise DsparkError(f"the launched {stage} stage ended without reporting its result; its log lines in this "
                          f"run say why")
    return reports[-1], [m for m in messages if "step" in m], dict(invocation.get_materialize_result().metadata)


def launch_training(context: dg.AssetExecutionContext, launcher: StageLauncher, device: str, dtype: str, spec: str,
                    cache: Path, training) -> tuple["TrainReport", dict]:
    """Train through the launcher: (the child's TrainReport, the materialization metadata it reported plus its
    per-step losses)."""
    from dspark_core.recipes.training import TrainReport

    invocation = launcher.run(context, "train", {
        "target": spec, "device": device, "dtype": dtype, "cache": str(cache), "training": training.to_dict(),
        "report_every": launcher.report_every})
    report, steps, metadata = _reported(invocation, "train")
    curve = [{"step": int(m["step"]), "loss": m.get("loss"), "expected_tau": m.get("expected_tau")} for m in steps]
    return TrainReport.from_json(report["report"]), {
        **metadata, "launcher": f"{launcher.mode}, {launcher.nproc} rank(s)", "reported_steps": len(steps),
        "loss_by_step": dg.MetadataValue.json(curve)}


def launch_cache(context: dg.AssetExecutionContext, launcher: StageLauncher, device: str, dtype: str, spec: str,
                 dataset: str, cache_config) -> tuple["FeatureCacheReport", dict]:
    """Build the feature cache through the launcher: (the child's report, the metadata it reported)."""
    from dataclasses import asdict

    from dspark_core.recipes.features import FeatureCacheReport

    invocation = launcher.run(context, "cache", {"target": spec, "device": device, "dtype": dtype, "dataset": dataset,
                                                 "cache_config": asdict(cache_config)})
    report, _, metadata = _reported(invocation, "cache")
    return FeatureCacheReport.from_json(report["report"]), {
        **metadata, "launcher": f"{launcher.mode}, {launcher.nproc} rank(s)"}
