"""The documentation site builds strict (a broken link or a missing page fails), its CLI reference is every
command's --help, and its result tables are what the result files say."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import results_tables  # noqa: E402


def test_the_site_builds_strict_with_every_commands_help(tmp_path):
    from docs_hooks import _command_paths
    import typer.main

    from dspark_cli import app

    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    page = html.unescape(re.sub(r"<[^>]+>", "", (tmp_path / "site" / "cli" / "index.html").read_text()))
    paths = _command_paths(typer.main.get_command(app))
    assert len(paths) > 15
    for path in paths:
        assert f"Usage: {' '.join(('dspark', *path))} [OPTIONS]" in page, path
    assert "--warm-start" in page and "--temperature" in page


def test_result_tables_are_what_the_result_files_say():
    assert results_tables.stale() == []


def test_an_edited_number_in_a_results_table_is_caught(tmp_path):
    page = (ROOT / "docs" / "results.md").read_text()
    block = re.search(r"<!-- table:ladder -->.*?<!-- /table:ladder -->", page, re.S).group(0)
    assert "| 1.408 |" in block
    edited = tmp_path / "results.md"
    edited.write_text(page.replace(block, block.replace("| 1.408 |", "| 1.418 |")))
    assert results_tables.stale([edited]) == [f"{edited}: table ladder"]
    edited.write_text(page)
    assert results_tables.stale([edited]) == []


def test_every_result_file_the_docs_quote_exists():
    quoted = set()
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        quoted |= set(re.findall(r"benchmarks/results/[\w./-]+\.(?:json|png|md)", page.read_text()))
        quoted |= {f"benchmarks/results/{name}" for name in re.findall(r"`([\w.-]+-cpu\.json)`", page.read_text())}
    missing = sorted(path for path in quoted if not (ROOT / path).exists())
    assert quoted and not missing, missing
