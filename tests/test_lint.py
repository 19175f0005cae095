"""Static checks that catch what only a rarely taken path would hit at run time: a name used but never defined or
imported (`make run`'s report once called a helper its module never imported), an import that shadows another,
an import nobody uses. Pyflakes' rules, run by ruff over every package of the project."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["dspark_core", "dspark_cli", "pipelines", "assets", "benchmarks", "scripts", "tests"]
#: undefined names (F821-F823), redefinitions of unused names (F811), unused imports (F401)
RULES = "F821,F822,F823,F811,F401"


def _ruff(*paths: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency (pyproject.toml); reinstall with `make setup`"
    return subprocess.run([ruff, "check", "--no-cache", "--select", RULES, "--output-format", "concise", *paths],
                          cwd=ROOT, capture_output=True, text=True)


def test_no_name_is_used_without_being_defined_or_imported():
    result = _ruff(*PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_finds_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def report(model):\n    return literal(model)\n")
    result = _ruff(str(bad))
    assert result.returncode == 1 and "F821" in result.stdout
