"""`make ui`: the Dagster UI (http://127.0.0.1:3000) and the MLflow UI (http://127.0.0.1:5000) on localhost,
both on the platform's stores under $DSPARK_HOME. Ctrl-C stops both."""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipelines.instance import use_dagster_home
from pipelines.tracking import default_artifact_root, default_tracking_uri


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    parser.add_argument("--dagster-port", type=int, default=3000)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--no-mlflow", action="store_true", help="start only the Dagster UI")
    args = parser.parse_args()

    home = use_dagster_home()
    # Ctrl-C (SIGINT, even if a background shell ignored it) and `kill` (SIGTERM) both stop both servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    bin_dir = Path(sys.executable).parent
    processes = []
    if not args.no_mlflow:
        processes.append(subprocess.Popen([
            str(bin_dir / "mlflow"), "server", "--backend-store-uri", default_tracking_uri(),
            "--default-artifact-root", default_artifact_root().as_uri(), "--host", args.host, "--port", str(args.mlflow_port),
            "--workers", "1",
        ], env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))  # no GenAI job workers (~250 MB each)
    processes.append(subprocess.Popen([
        str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", args.host, "-p", str(args.dagster_port),
    ], env={**os.environ, "DAGSTER_HOME": str(home)}))
    print(f"Dagster UI  http://{args.host}:{args.dagster_port}  (instance {home})")
    if not args.no_mlflow:
        print(f"MLflow UI   http://{args.host}:{args.mlflow_port}  ({default_tracking_uri()})")
    try:
        while all(p.poll() is None for p in processes):
            try:
                processes[-1].wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    return max((p.returncode or 0) for p in processes)


if __name__ == "__main__":
    sys.exit(main())
