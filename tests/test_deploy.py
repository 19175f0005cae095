"""deploy/, validated as far as this machine allows (no cluster, no container engine, no helm): every file parses,
every Kubernetes field validates against the Kubernetes client's models (unknown or mistyped fields are refused),
the code location loads with the deployment's environment, and a heavy stage's pod renders as Dagster Pipes would
create it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VALUES = yaml.safe_load((DEPLOY / "helm" / "dagster-values.yaml").read_text())


def k8s(model, fields: dict):
    """`fields` (camelCase, as in a manifest) as a Kubernetes client model; unknown or mistyped fields raise."""
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, fields))


def deployment_environment(tmp_path: Path) -> dict[str, str]:
    """The code location's environment from the Helm values, with the pod's paths mapped onto this machine."""
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    env["DSPARK_HOME"] = str(tmp_path / "home")
    env["DSPARK_METRICS"] = str(tmp_path / "home" / "metrics-log")
    env["DSPARK_LAUNCHER_POD_TEMPLATE"] = str(ROOT / Path(env["DSPARK_LAUNCHER_POD_TEMPLATE"]).relative_to("/opt/dspark"))
    return env


def test_the_helm_values_kubernetes_fields_validate():
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    k8s(kubernetes.client.V1Container, {"name": deployment["name"], "env": deployment["env"],
                                        "volumeMounts": deployment["volumeMounts"], "resources": deployment["resources"]})
    for volume in deployment["volumes"]:
        k8s(kubernetes.client.V1Volume, volume)
    run = VALUES["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    container = k8s(kubernetes.client.V1Container, {"name": "run", **run["containerConfig"]})
    pod = k8s(kubernetes.client.V1PodSpec, {"containers": [{"name": "run"}], **run["podSpecConfig"]})
    assert {m.name for m in container.volume_mounts} <= {v.name for v in pod.volumes}
    assert VALUES["postgresql"]["enabled"] is False and VALUES["generatePostgresqlPasswordSecret"] is False
    assert VALUES["dagsterWebserver"]["service"]["type"] == "ClusterIP"  # not exposed by default


def test_the_run_queue_limits_the_pools_the_jobs_are_tagged_with():
    from pipelines.definitions import defs
    from pipelines.instance import POOL_TAG

    coordinator = VALUES["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    pools = {job.tags.get(POOL_TAG) for job in defs.resolve_all_job_defs() if POOL_TAG in job.tags}
    assert pools == {limit["value"] for limit in limits if limit["key"] == POOL_TAG} == {"accelerator", "metrics"}


def test_the_code_location_loads_with_the_deployments_environment(tmp_path):
    env = {**os.environ, **deployment_environment(tmp_path)}
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    module = deployment["dagsterApiGrpcArgs"][deployment["dagsterApiGrpcArgs"].index("--module-name") + 1]
    script = (f"import json, {module} as location; defs = location.defs; defs.resolve_asset_graph(); "
              f"launcher = defs.resources['launcher']; print(json.dumps(launcher.model_dump()))")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    launcher = json.loads(done.stdout.strip().splitlines()[-1])
    assert launcher["mode"] == "kubernetes" and launcher["nproc"] == launcher["gpus"] == 8
    assert launcher["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def test_a_stage_pod_renders_and_validates_as_pipes_creates_it(tmp_path, monkeypatch):
    from dagster_k8s.pipes import build_pod_body

    from pipelines.launchers import CONTAINER, StageLauncher

    for name, value in deployment_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    launcher = StageLauncher.from_environment()
    pod = build_pod_body(pod_name="dagster-run-train", image=None, command=None,
                         env_vars={"DAGSTER_PIPES_CONTEXT": "e30=", "DAGSTER_PIPES_MESSAGES": "e30="},
                         base_pod_meta=None, base_pod_spec=launcher.pod_spec("train"))
    assert isinstance(pod, kubernetes.client.V1Pod)
    spec = pod.spec
    (container,) = spec.containers
    assert container.name == CONTAINER and container.image == launcher.image
    assert container.command[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc-per-node=8" in container.command
    assert container.command[-3:] == ["-m", "pipelines.pipes_stage", "train"]
    assert container.resources.limits["nvidia.com/gpu"] == container.resources.requests["nvidia.com/gpu"] == "8"
    assert container.resources.limits["memory"] == "96Gi"  # the template's resources are kept beside the GPUs
    assert spec.restart_policy == "Never" and spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [t.key for t in spec.tolerations] == ["nvidia.com/gpu"]
    env = {e.name for e in container.env}
    assert {"DSPARK_HOME", "MLFLOW_TRACKING_URI", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= env
    assert {m.name for m in container.volume_mounts} <= {v.name for v in spec.volumes}


def test_a_bad_pod_template_or_launcher_setting_is_one_line(tmp_path, monkeypatch):
    from dspark_core.errors import DsparkError
    from pipelines.launchers import StageLauncher

    broken = tmp_path / "pod.yaml"
    broken.write_text("nodeSelector: [unclosed\n")
    with pytest.raises(DsparkError, match="pod_template .* could not be read as YAML"):
        StageLauncher(mode="kubernetes", image="x", pod_template=str(broken)).pod_spec("train")
    broken.write_text("- a list\n")
    with pytest.raises(DsparkError, match="holds list, not pod spec fields"):
        StageLauncher(mode="kubernetes", image="x", pod_template=str(broken)).pod_spec("train")
    monkeypatch.setenv("DSPARK_LAUNCHER", "slurm")
    with pytest.raises(DsparkError, match="^DSPARK_LAUNCHER='slurm': input should be 'in_process'"):
        StageLauncher.from_environment()


def test_the_mlflow_server_manifest_validates():
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text()))
    models = {("apps/v1", "Deployment"): kubernetes.client.V1Deployment, ("v1", "Service"): kubernetes.client.V1Service}
    parsed = {doc["kind"]: k8s(models[(doc["apiVersion"], doc["kind"])], doc) for doc in documents}
    deployment, service = parsed["Deployment"], parsed["Service"]
    labels = deployment.spec.template.metadata.labels
    assert service.spec.selector.items() <= labels.items()
    assert deployment.spec.selector.match_labels.items() <= labels.items()
    (container,) = deployment.spec.template.spec.containers
    assert container.command == ["mlflow", "server"] and "--backend-store-uri" in container.args
    assert container.readiness_probe.http_get.path == "/health"
    assert service.spec.type == "ClusterIP" and service.spec.ports[0].target_port == container.ports[0].name


def test_the_dockerfile_copies_what_exists_and_serves_the_code_location_the_chart_names():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.MULTILINE):
        *sources, _ = line.split()
        assert all((ROOT / source).exists() for source in sources), line
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    command = json.loads(re.search(r"^CMD (\[.+\])$", dockerfile, flags=re.MULTILINE).group(1))
    assert command[command.index("--module-name") + 1] == deployment["dagsterApiGrpcArgs"][1]
    assert str(deployment["port"]) == command[command.index("--port") + 1]
