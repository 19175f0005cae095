"""Browser check of the Dagster UI: start `dagster dev` on the platform's instance ($DSPARK_HOME/dagster),
open the global asset graph in headless Chromium and save a screenshot.

Needs Chromium (Debian: `apt-get install chromium`). Run after `make run` so the graph shows materialized
assets:  .venv/bin/python scripts/screenshot_ui.py [--out ui-asset-graph.png] [--path /asset-groups]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.instance import use_dagster_home  # noqa: E402


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ui-asset-graph.png")
    parser.add_argument("--path", default="/asset-groups", help="UI page to capture (default: the global asset graph)")
    parser.add_argument("--port", type=int, default=3333)
    parser.add_argument("--size", default="1800,1000", help="window width,height")
    parser.add_argument("--wait-ms", type=int, default=25000, help="virtual time the page gets to load its data")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        raise SystemExit("no Chromium found; install it (Debian: apt-get install chromium)")

    home = use_dagster_home()
    root = Path(__file__).resolve().parents[1]
    dagster = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)],
        cwd=root, env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{args.port}/server_info", 180)
        out = Path(args.out).resolve()
        subprocess.run([
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={args.size}",
            f"--virtual-time-budget={args.wait_ms}", f"--screenshot={out}", f"http://127.0.0.1:{args.port}{args.path}",
        ], check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB) of http://127.0.0.1:{args.port}{args.path}")
    finally:
        dagster.terminate()
        try:
            dagster.wait(30)
        except subprocess.TimeoutExpired:
            dagster.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
