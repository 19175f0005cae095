"""Stage 5, export: a trained draft in a serving layout (speculators' field names, or our own `hf` layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dspark_core.drafters.checkpoint import read_draft_config, weights_sha256
from dspark_core.export.formats import FORMATS, export_draft
from dspark_core.models.spec import slugify
from dspark_core.paths import directory_mib, dspark_home
from dspark_core.settings import check_settings, setting

__all__ = ["ExportConfig", "ExportReport", "export", "export_dir"]


@dataclass(frozen=True)
class ExportConfig:
    format: str = setting("speculators", "'speculators' (vLLM speculators' field layout) or 'hf' (our own "
                                         "Hugging Face-style layout)", choices=FORMATS)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class ExportReport:
    path: Path
    format: str
    algorithm: str
    weights_sha256: str
    size_mib: float


def export_dir(checkpoint: Path, config: ExportConfig) -> Path:
    """`exports/<target>/<algorithm>/<training run>-<format>` under $DSPARK_HOME."""
    source = read_draft_config(checkpoint)
    run = Path(checkpoint).resolve().parent.name
    return dspark_home() / "exports" / slugify(source["target"]) / source["algorithm"] / f"{run}-{config.format}"


def export(checkpoint: Path, config: ExportConfig, *, out: Path | None = None) -> ExportReport:
    """Export `checkpoint` (to `out`, or its default place); loading the export back gives identical logits."""
    out = Path(out) if out else export_dir(checkpoint, config)
    export_draft(checkpoint, out, config.format)
    return ExportReport(path=out, format=config.format, algorithm=read_draft_config(out)["algorithm"],
                        weights_sha256=weights_sha256(out), size_mib=directory_mib(out))
