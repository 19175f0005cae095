"""The layering rules of docs/architecture.md, checked on the source: the library imports no orchestration,
imports only point down, nothing imports in a circle, the front ends share the library's defaults, and
asset bodies stay thin."""

from __future__ import annotations

import ast
import re
import dataclasses
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dspark_core", "dspark_cli", "pipelines", "assets", "benchmarks")

# Lower rank = lower layer. An import may only go to the same or a lower rank, and between two different
# packages of the same rank not at all.
_CORE_BASE = {"dspark_core", "dspark_core.errors", "dspark_core.settings", "dspark_core.paths", "dspark_core.device",
              "dspark_core.provenance", "dspark_core.numerics", "dspark_core.distributed", "dspark_core.schemas"}
_PLATFORM_COMPOSITION = {"checks", "jobs", "sensors", "schedules", "definitions", "main", "ui"}
_RANKS = {
    "dspark_core.models": 1, "dspark_core.store": 1,
    "dspark_core.decoding": 2,
    "dspark_core.data": 3, "dspark_core.drafters": 3,
    "dspark_core.export": 4, "dspark_core.training": 4, "dspark_core.evaluation": 4,
    "dspark_core.recipes": 5, "dspark_core.serving": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _layer(module: str) -> tuple[int, str]:
    """(rank, layer name) of a project module."""
    if module in _CORE_BASE:
        return 0, "core base"
    top = module.split(".")[0]
    if top == "dspark_core":
        package = ".".join(module.split(".")[:2])
        return _RANKS[package], package
    if top == "pipelines":
        leaf = module.split(".")[1] if "." in module else ""
        return (8, "platform composition") if leaf in _PLATFORM_COMPOSITION else (6, "platform foundation")
    return {"dspark_cli": (7, "dspark_cli"), "assets": (7, "assets"), "benchmarks": (8, "benchmarks")}[top]


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {module: _imports(path, module, known) for module, path in sources.items()}


def test_imports_only_point_down():
    upward = []
    for module, targets in _graph().items():
        rank, layer = _layer(module)
        for target in targets:
            target_rank, target_layer = _layer(target)
            if target_rank > rank or (target_rank == rank and target_layer != layer):
                upward.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_the_library_imports_without_orchestration_or_cli_frameworks():
    """Import every dspark_core module in a fresh interpreter where dagster, mlflow, typer and click cannot be
    imported at all."""
    modules = sorted(m for m in _sources() if m.split(".")[0] == "dspark_core")
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {{"dagster", "mlflow", "typer", "click"}}:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocked())
        for module in {modules!r}:
            importlib.import_module(module)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {{"dagster", "mlflow", "typer", "click"}})
        assert not leaked, leaked
        print("imported", len({modules!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)}" in result.stdout


def _cli_parameters():
    """(command path, typer parameter) for every option of every `dspark` command."""
    import typer.main

    from dspark_cli import app

    group = typer.main.get_command(app)

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            for parameter in command.params:
                yield " ".join(path), parameter

    yield from walk(group, [])


def test_cli_and_dagster_config_take_their_defaults_from_the_library():
    """Every Dagster config field and every CLI option named like a setting of the library dataclass it feeds
    has that setting's default."""
    from dspark_cli import data, eval as eval_cli, generate, train
    from dspark_core.decoding.scheduler import ScheduleConfig
    from dspark_core.recipes.calibration import CalibrationConfig
    from dspark_core.settings import default_of
    from pipelines import config as platform_config

    compared = 0
    for _, cls in inspect.getmembers(platform_config, inspect.isclass):
        if issubclass(cls, platform_config.CoreConfig) and cls is not platform_config.CoreConfig:
            core = cls.core
            for name, field in cls.model_fields.items():
                if name in {f.name for f in dataclasses.fields(core)}:
                    default = field.default_factory() if field.default_factory else field.default
                    expected = default_of(core, name)
                    assert default == (list(expected) if isinstance(expected, tuple) else expected), f"{cls.__name__}.{name}"
                    compared += 1

    # Options whose destination names the library setting they feed.
    feeds = {"prompts": data.PromptsConfig, "regenerate": data.RegenerationConfig, "cache": data.CacheConfig,
             "train": train.TrainConfig, "generate": generate.GenerationConfig, "eval": eval_cli.EvalConfig,
             "calibrate": CalibrationConfig}
    aliases = {"drafter": "algorithm", "anchors": "anchors_per_sequence", "warmup": "warmup_steps",
               "draft_vocab": "draft_vocab_size", "ce": "ce", "tv": "tv", "conf": "conf"}
    for command, parameter in _cli_parameters():
        leaf = command.split(" ")[-1]
        core = feeds.get(leaf)
        name = aliases.get(parameter.name, parameter.name)
        if core is None or parameter.name == "dataset":
            continue
        if leaf == "generate" and parameter.name in ("schedule", "threshold"):  # GenerationConfig.schedule's fields
            core, name = ScheduleConfig, {"schedule": "mode"}.get(parameter.name, parameter.name)
        owners = [c for c in (core, train.LossWeights, data.PromptsConfig) if name in {f.name for f in dataclasses.fields(c)}]
        if owners:  # a comma-separated list option: None means the empty default
            expected = default_of(owners[0], name)
            assert parameter.default == (None if expected == () else expected), f"dspark {command} --{parameter.name}"
            compared += 1
    assert compared > 40


def test_shared_defaults_really_are_shared():
    """The regression the duplication caused: the CLI and the platform split prompts alike."""
    from dspark_core.data.sources import PromptsConfig
    from dspark_core.settings import default_of
    from pipelines.config import PromptDatasetConfig

    option = {p.name: p for command, p in _cli_parameters() if command == "data prompts"}["validation_fraction"]
    assert option.default == PromptDatasetConfig().validation_fraction == default_of(PromptsConfig, "validation_fraction")


def test_asset_bodies_are_thin():
    """An asset body reads config, calls a library recipe, logs and returns metadata: about 30 lines at most."""
    long = []
    for path in sorted((ROOT / "assets").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any("asset" in ast.unparse(d) for d in node.decorator_list):
                first = node.body[1] if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) else node.body[0]
                lines = node.end_lineno - first.lineno + 1
                if lines > 32:
                    long.append(f"{path.name}:{node.name} has {lines} lines")
    assert not long, long


def test_block_size_default_is_declared_once():
    from dspark_core.decoding import GenerationConfig
    from dspark_core.drafters.dspark import DSparkConfig
    from dspark_core.drafters.eagle3 import Eagle3Config
    from dspark_core.recipes.evaluation import EvalConfig
    from dspark_core.settings import DEFAULT_BLOCK_SIZE, DEFAULT_DECODE_BLOCK_SIZE
    from dspark_core.training.trainer import TrainConfig

    assert {TrainConfig().block_size, DSparkConfig().block_size, Eagle3Config().block_size} == {DEFAULT_BLOCK_SIZE}
    assert {GenerationConfig().block_size, EvalConfig().block_size} == {DEFAULT_DECODE_BLOCK_SIZE}
    literal = [str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
               if re.search(r"block_size(: int)? ?= ?[0-9]", p.read_text())]
    assert not literal, literal


@pytest.mark.parametrize("module", ["dspark_core", "dspark_cli", "pipelines", "assets", "benchmarks"])
def test_documents_cited_by_the_source_are_in_the_repository(module):
    """Docstrings and comments cite only documents a reader of the repository has."""
    cited = {(p.relative_to(ROOT), name) for p in (ROOT / module).rglob("*.py")
             for name in re.findall(r"[\w./-]+\.md\b(?!\()", p.read_text())}
    missing = [f"{source}: {name}" for source, name in cited
               if not (ROOT / name).exists() and not (ROOT / "docs" / Path(name).name).exists()]
    assert not missing, missing
    makefile = re.findall(r"[\w./-]+\.md\b", (ROOT / "Makefile").read_text())
    assert all((ROOT / name).exists() for name in makefile), makefile
