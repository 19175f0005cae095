"""Browser check of the Dagster UI: start `dagster dev` on the platform's instance ($DSPARK_HOME/dagster),
open the global asset graph in headless Chromium (driven by Selenium), expand every asset group and save
a screenshot (materialized assets are drawn green), then the speculative_eval asset page (its latest
materialization's metadata: τ, speed-up, result table, acceptance plot) and the metrics_history page (τ over time).

Needs Chromium and ChromeDriver (`make screenshot` installs Debian's `chromium` and `chromium-driver` when missing,
then runs this script into docs/) and the dev extras (selenium). Run it after `make run`:
  .venv/bin/python scripts/screenshot_ui.py [--out ui-asset-graph.png]
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

GROUPS = ("data", "training", "serving", "evaluation")
#: further pages saved next to the graph as <out>-<name>.png
EXTRA_PAGES = (("/assets/speculative_eval", "speculative-eval"), ("/assets/metrics_history", "metrics-history"))


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


def capture(browser: str, url: str, out: Path, size: str, wait_s: float) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        time.sleep(wait_s)
        for button in driver.find_elements(By.TAG_NAME, "button"):
            if button.text == "Skip":  # the first-visit community dialog
                button.click()
        # The UI keeps the expanded groups of the global graph in localStorage; open all, then reload.
        groups = ",".join(f"global@global:{g}" for g in GROUPS)
        driver.execute_script("localStorage.setItem('asset-graph-open-graph-nodes-global-__GLOBAL__', "
                              "JSON.stringify({expanded: arguments[0]}))", groups)
        driver.refresh()
        time.sleep(wait_s)
        driver.save_screenshot(str(out))
        width = int(size.split(",")[0])
        driver.set_window_size(width, 2200)  # asset pages are long: metadata tables and plots
        for page, name in EXTRA_PAGES:
            driver.get(url.replace("/asset-groups", page))
            time.sleep(wait_s)
            driver.save_screenshot(str(out.with_name(f"{out.stem}-{name}{out.suffix}")))
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ui-asset-graph.png")
    parser.add_argument("--port", type=int, default=3333)
    parser.add_argument("--size", default="2000,1100", help="window width,height")
    parser.add_argument("--wait-s", type=float, default=10.0, help="seconds the page gets to load its data")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser or not shutil.which("chromedriver"):
        raise SystemExit("Chromium and ChromeDriver are needed: `make screenshot` installs them (Debian's chromium and "
                         "chromium-driver) and runs this script")

    home = use_dagster_home()
    root = Path(__file__).resolve().parents[1]
    dagster = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)],
        cwd=root, env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{args.port}/server_info", 180)
        out = Path(args.out).resolve()
        capture(browser, f"http://127.0.0.1:{args.port}/asset-groups", out, args.size, args.wait_s)
        print(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB): the global asset graph, every group expanded; "
              f"and {', '.join(f'{out.stem}-{name}{out.suffix}' for _, name in EXTRA_PAGES)}")
    finally:
        dagster.terminate()
        try:
            dagster.wait(30)
        except subprocess.TimeoutExpired:
            dagster.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
