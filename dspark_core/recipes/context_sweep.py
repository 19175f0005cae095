"""Context-length sweep: τ and speed-up of a draft as the context grows, from short prompts up to the longest
context the target supports (beyond the sequence length the draft was trained on).

Each long prompt is a real conversation: earlier turns taken from a dataset's regenerated conversations (the
target's own answers to other requests) are put in front of an evaluation question until the rendered prompt
reaches the length asked for; or, with `context = "documents"`, a real document (text files; by default
Python's standard library source) is quoted before the question. Every length is decoded autoregressively and
with the draft on the same prompts, in one process.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from dspark_core.data.chat import render_ids
from dspark_core.data.prompts import PromptRecord
from dspark_core.decoding.drafter import Drafter
from dspark_core.drafters.checkpoint import read_draft_config
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.evaluation.plots import sweep_curves
from dspark_core.evaluation.speculative import ALL, EvalPrompt
from dspark_core.evaluation.suites import Benchmark
from dspark_core.models.derive import STDLIB_TEXT, text_files
from dspark_core.models.target import TargetModel
from dspark_core.recipes.evaluation import EvalConfig, EvalReport, evaluate
from dspark_core.settings import DEFAULT_DECODE_BLOCK_SIZE, check_settings, help_of, setting
from dspark_core.store.acceptance import AcceptanceRow

__all__ = ["SweepConfig", "SweepReport", "context_prompts", "context_sweep"]


@dataclass(frozen=True)
class SweepConfig:
    lengths: tuple[int, ...] = setting((128, 512, 2048, 8192), "Prompt lengths (tokens) to build and decode; "
                                       "lengths beyond the target's context are capped to it")
    prompts_per_length: int = setting(3, "Prompts per length (questions spread over the suite's domains)", min=1)
    max_new_tokens: int = setting(48, "Tokens generated per prompt", min=1)
    temperature: float = setting(0.0, "0 = greedy; > 0 samples", min=0)
    block_size: int | None = setting(DEFAULT_DECODE_BLOCK_SIZE, help_of(EvalConfig, "block_size"), min=1)
    context: str = setting("turns", "What fills the context: 'turns' (earlier conversation turns from the "
                                    "dataset's regenerated conversations) or 'documents' (a quoted text file)",
                           choices=("turns", "documents"))
    documents: str = setting(STDLIB_TEXT, "For context 'documents': a text file, a directory of text files (.txt, .md or .py), "
                                          "or 'python-stdlib'")
    seed: int = setting(0, "Seed of the choice of earlier turns and documents")

    def __post_init__(self) -> None:
        check_settings(self)
        lengths = tuple(sorted(set(int(n) for n in self.lengths)))
        if not lengths or lengths[0] < 16:
            raise ConfigError(f"context lengths {self.lengths!r}: give lengths of at least 16 tokens, e.g. 128,512,2048")
        object.__setattr__(self, "lengths", lengths)


def _render(target: TargetModel, messages: list[tuple[str, str]]) -> list[int]:
    return render_ids(target, messages, add_generation_prompt=True)


def _with_turns(target: TargetModel, question: PromptRecord, length: int, turns: list[tuple[str, str]],
                rng: random.Random) -> list[int]:
    """Earlier (user, assistant) turns in front of the question, added while the prompt stays within `length`."""
    messages: list[tuple[str, str]] = []
    best = _render(target, list(question.messages))
    for user, assistant in rng.sample(turns, len(turns)):
        candidate = messages + [("user", user), ("assistant", assistant)]
        ids = _render(target, candidate + list(question.messages))
        if len(ids) > length:
            continue  # a shorter turn may still fit
        messages, best = candidate, ids
        if len(ids) > 0.92 * length:
            break
    return best


def _with_document(target: TargetModel, question: PromptRecord, length: int, document: list[int]) -> list[int]:
    """The question after as much of a document as fits in `length` tokens."""
    def prompt(n: int) -> list[int]:
        text = target.tokenizer.decode(document[:n])
        return _render(target, [("user", f"Here is a file:\n\n{text}\n\n{question.user_turns[0]}")])

    low, high = 0, len(document)
    while low < high:  # the longest document prefix that keeps the prompt within `length`
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(prompt(middle)) <= length else (low, middle - 1)
    return prompt(low)


def context_prompts(target: TargetModel, questions: Benchmark, config: SweepConfig, *,
                    conversations: list[list[tuple[str, str]]] | None = None) -> dict[int, list[EvalPrompt]]:
    """{length: prompts of about that many tokens}; each prompt ends with one of the suite's questions."""
    limit = target.max_context - config.max_new_tokens - 1
    lengths = sorted({min(n, limit) for n in config.lengths})
    picked = questions.selected(config.prompts_per_length).records
    rng = random.Random(config.seed)
    if config.context == "turns":
        turns = [(c[i][1], c[i + 1][1]) for c in conversations or [] for i in range(len(c) - 1)
                 if c[i][0] == "user" and c[i + 1][0] == "assistant"]
        if not turns:
            raise DsparkError("the 'turns' context needs a dataset's regenerated conversations (`dspark data "
                              "regenerate`); or use context 'documents'")
    else:
        files = text_files(config.documents)
        documents = [target.tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"]
                     for path in rng.sample(files, min(len(files), 4 * len(picked)))]
        documents = [d for d in documents if len(d) >= max(lengths)] or [sum(documents, [])]
    prompts = {}
    for length in lengths:
        built = []
        for index, question in enumerate(picked):
            ids = (_with_turns(target, question, length, turns, random.Random(config.seed + index))
                   if config.context == "turns" else
                   _with_document(target, question, length, documents[index % len(documents)]))
            built.append(EvalPrompt(f"{question.id}@{length}", question.source, ids))
        prompts[length] = built
    return prompts


@dataclass
class SweepPoint:
    length: int
    report: EvalReport

    @property
    def mean_tokens(self) -> float:
        return statistics.mean(len(p.ids) for p in self.report.prompts)


@dataclass
class SweepReport:
    config: SweepConfig
    target_spec: str
    drafter: str
    #: the sequence length the draft was trained on (None: not a trained draft)
    trained_length: int | None
    points: list[SweepPoint] = field(default_factory=list)

    def table(self) -> tuple[list[str], list[list]]:
        columns = ["length", "mean prompt tokens", "prompts", "τ", "speed-up", "cond. accept @1", "verify ms",
                   "beyond training length"]
        rows = []
        for point in self.points:
            overall = point.report.overall
            rows.append([point.length, round(point.mean_tokens), len(point.report.prompts), overall.tau,
                         overall.speedup, overall.cond_accept[0][0] if overall.cond_accept else None,
                         overall.verify_ms_per_round,
                         None if self.trained_length is None else point.mean_tokens > self.trained_length])
        return columns, rows

    def acceptance_rows(self, *, base_model: str, recorded_at: datetime, run_id: str | None = None,
                        mlflow_run_id: str | None = None) -> list[AcceptanceRow]:
        """Each length's overall rows, its context_bucket naming the length ('ctx-2048'); benchmark
        'context-sweep:<context>'."""
        rows = []
        for point in self.points:
            for row in point.report.acceptance_rows(base_model=base_model, recorded_at=recorded_at, run_id=run_id,
                                                    mlflow_run_id=mlflow_run_id):
                if row.context_bucket == ALL and row.domain == ALL:
                    rows.append(replace(row, context_bucket=f"ctx-{point.length}"))
        return rows

    def plot(self, path: Path) -> Path:
        _, rows = self.table()
        return sweep_curves([r[1] for r in rows], {"τ": [r[3] for r in rows], "speed-up": [r[4] for r in rows]},
                            path, trained_length=self.trained_length,
                            title=f"{self.drafter} on {self.target_spec}: context-length sweep ({self.config.context})")

    def to_json(self) -> dict:
        columns, rows = self.table()
        return {"target": self.target_spec, "drafter": self.drafter, "trained_length": self.trained_length,
                "context": self.config.context, "max_new_tokens": self.config.max_new_tokens,
                "temperature": self.config.temperature, "table": {"columns": columns, "rows": rows}}


def context_sweep(target: TargetModel, drafter: Drafter | Path, questions: Benchmark, config: SweepConfig, *,
                  conversations: list[list[tuple[str, str]]] | None = None, progress: bool = False) -> SweepReport:
    """Decode each length's prompts autoregressively and with `drafter`; τ and speed-up per length."""
    path = None if isinstance(drafter, Drafter) else Path(drafter)
    trained = read_draft_config(path).get("training", {}).get("max_length") if path else None
    label = read_draft_config(path)["algorithm"] if path else drafter.name
    report = SweepReport(config, target.spec, label, trained)
    settings = EvalConfig(suites=(questions.name,), benchmark=f"context-sweep:{config.context}",
                          max_prompts=config.prompts_per_length, max_new_tokens=config.max_new_tokens,
                          temperature=config.temperature, block_size=config.block_size, seed=config.seed)
    for length, prompts in context_prompts(target, questions, config, conversations=conversations).items():
        report.points.append(SweepPoint(length, evaluate(target, drafter, prompts, settings, progress=progress)))
    return report
