"""Evaluation suites: the built-in offline suite, the standard public benchmarks by name, and local copies.

A suite spec (what `dspark eval --suite` takes, repeatable) is one of

* a built-in suite: `heldout-v1`, 120 single-turn requests written for this project, 40 each of math word
  problems, code tasks and open-ended chat or writing (never used for training);
* a standard benchmark by its usual name (`gsm8k`, `math500`, `aime`, `mbpp`, `humaneval`, `livecodebench`,
  `mt-bench`, `alpaca`, `arena-hard`), read from its Hugging Face hub dataset through `datasets` (needs the
  network or a filled Hugging Face cache);
* `NAME=PATH`: a local copy of a standard benchmark, either in its own hub columns (`{"question": ...}` for
  GSM8K) or in the Spec-Bench shape `{"turns": [...], "category": ...}` (`.jsonl`; `.parquet`, `.csv` and
  `.json` files go through `datasets`);
* `PATH.jsonl`: any file in the Spec-Bench shape (e.g. Spec-Bench's own `question.jsonl`); the benchmark is
  named after the file and each line's `category` is its domain.

Multi-turn records (MT-Bench, Spec-Bench) are evaluated on their first turn, so that speculative and
autoregressive decoding always see the same context. Every benchmark is a list of `PromptRecord`s whose
`source` is the record's domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dspark_core.data.prompts import LoadReport, PromptRecord, parse_or_report, read_jsonl, read_prompt_file
from dspark_core.errors import DsparkError

SUITES_DIR = Path(__file__).parent
SUITES = {path.stem: path for path in sorted(SUITES_DIR.glob("*.jsonl"))}
#: display order of domains in tables (others follow alphabetically)
DOMAIN_ORDER = ("math", "code", "chat", "writing")


@dataclass(frozen=True)
class StandardSet:
    """Where a public benchmark lives on the hub and which of its columns hold the request."""

    domain: str
    hub_id: str
    split: str
    #: columns joined (blank line between) into the user turn; a list column holds the turns
    columns: tuple[str, ...]
    config: str | None = None
    data_files: str | None = None


STANDARD_SETS: dict[str, StandardSet] = {
    "gsm8k": StandardSet("math", "openai/gsm8k", "test", ("question",), config="main"),
    "math500": StandardSet("math", "HuggingFaceH4/MATH-500", "test", ("problem",)),
    "aime": StandardSet("math", "AI-MO/aimo-validation-aime", "train", ("problem",)),
    "mbpp": StandardSet("code", "google-research-datasets/mbpp", "test", ("text",), config="full"),
    "humaneval": StandardSet("code", "openai/openai_humaneval", "test", ("prompt",)),
    "livecodebench": StandardSet("code", "livecodebench/code_generation_lite", "train", ("question_content",),
                                 data_files="test.jsonl"),
    "mt-bench": StandardSet("chat", "HuggingFaceH4/mt_bench_prompts", "train", ("prompt",)),
    "alpaca": StandardSet("chat", "tatsu-lab/alpaca", "train", ("instruction", "input")),
    "arena-hard": StandardSet("chat", "lmarena-ai/arena-hard-auto", "train", ("turns",),
                              data_files="data/arena-hard-v0.1/question.jsonl"),
}
SUITE_FORMS = (f"a built-in suite ({', '.join(SUITES)}), a standard benchmark ({', '.join(STANDARD_SETS)}), "
               f"NAME=PATH (a local copy of one), or a .jsonl file in the Spec-Bench shape")


@dataclass(frozen=True)
class Benchmark:
    """One named benchmark of a suite: its prompts, each record's `source` being its domain."""

    name: str
    records: list[PromptRecord]

    @property
    def domains(self) -> list[str]:
        return ordered_domains({record.source for record in self.records})

    def selected(self, limit: int | None) -> "Benchmark":
        """At most `limit` prompts, taken in turn from each domain (file order within a domain), so that a
        small evaluation still covers every domain of the benchmark."""
        if limit is None or limit >= len(self.records):
            return self
        queues = {domain: [r for r in self.records if r.source == domain] for domain in self.domains}
        chosen: list[PromptRecord] = []
        while len(chosen) < limit:
            for domain in self.domains:
                if queues[domain] and len(chosen) < limit:
                    chosen.append(queues[domain].pop(0))
        return Benchmark(self.name, chosen)


def ordered_domains(domains) -> list[str]:
    known = [d for d in DOMAIN_ORDER if d in domains]
    return known + sorted(set(domains) - set(known))


def suite_records(name: str) -> list[PromptRecord]:
    """The prompts of built-in suite `name`, in file order."""
    if name not in SUITES:
        raise DsparkError(f"unknown evaluation suite {name!r}; built-in suites: {', '.join(SUITES)}")
    return read_jsonl(SUITES[name], on_error="raise")


def load_suite(spec: str, *, on_error: str = "raise", report: LoadReport | None = None) -> Benchmark:
    """The benchmark a suite spec names (see the module docstring for the forms)."""
    report = report if report is not None else LoadReport()
    name, _, path = spec.partition("=")
    if path:
        standard = STANDARD_SETS.get(name.lower())
        records = _read_file(Path(path).expanduser(), standard, on_error, report)
        return Benchmark(name.lower(), _first_turns(records, standard.domain if standard else None))
    if spec in SUITES:
        return Benchmark(spec, _first_turns(_read_file(SUITES[spec], None, "raise", report), None))
    if spec.lower() in STANDARD_SETS:
        standard = STANDARD_SETS[spec.lower()]
        return Benchmark(spec.lower(), _first_turns(_read_hub(spec.lower(), on_error, report), standard.domain))
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return Benchmark(Path(spec).stem, _first_turns(_read_file(Path(spec), None, on_error, report), None))
    raise DsparkError(f"unknown evaluation suite {spec!r}; give {SUITE_FORMS}")


def _first_turns(records: list[PromptRecord], domain: str | None) -> list[PromptRecord]:
    """Each record reduced to its system prompt and first user turn, its source set to its domain (the set's
    domain for a standard benchmark, else the record's category); duplicates dropped."""
    kept, seen = [], set()
    for record in records:
        first_user = next(i for i, (role, _) in enumerate(record.messages) if role == "user")
        reduced = PromptRecord.create(record.messages[: first_user + 1], domain or record.source or "general")
        if reduced.id not in seen:
            seen.add(reduced.id)
            kept.append(reduced)
    if not kept:
        raise DsparkError("the suite holds no usable prompts; check its format")
    return kept


def _adapter(standard: StandardSet | None):
    """Maps a row of a standard set's own columns to a prompt object; rows in a prompt shape pass unchanged.
    The object's `category` is kept (the record's domain)."""
    def adapt(row: dict) -> dict:
        if standard is None or not all(column in row for column in standard.columns):
            return row
        values = [row[column] for column in standard.columns]
        if len(values) == 1 and isinstance(values[0], list):  # a list of turns: strings or {"content": ...}
            turns = [turn.get("content") if isinstance(turn, dict) else turn for turn in values[0]]
            return {"turns": turns, "category": row.get("category")}
        parts = [value for value in values if isinstance(value, str) and value.strip()]
        return {"prompt": "\n\n".join(parts) if parts else None, "category": row.get("category")}
    return adapt


def _category(record: PromptRecord, location: str) -> PromptRecord:
    """The record with its source cleared when it is only a location (no category was given)."""
    return record if not record.source.startswith(location) else PromptRecord(record.id, record.messages, "")


def _read_file(path: Path, standard: StandardSet | None, on_error: str, report: LoadReport) -> list[PromptRecord]:
    if not path.is_file():
        raise DsparkError(f"suite file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        records = read_jsonl(path, on_error=on_error, report=report, adapt=_adapter(standard))
        return [_category(record, f"{path.name}:") for record in records]
    builders = {".parquet": "parquet", ".csv": "csv", ".json": "json"}
    if path.suffix not in builders:
        raise DsparkError(f"suite file {str(path)!r}: unknown format; give a .jsonl, .json, .parquet or .csv file")
    import datasets

    try:
        rows = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
    except Exception as exc:
        raise DsparkError(f"could not read suite file {str(path)!r} ({type(exc).__name__}: {exc})") from exc
    return _rows_to_records(rows, standard, str(path), on_error, report)


def _read_hub(name: str, on_error: str, report: LoadReport) -> list[PromptRecord]:
    import datasets

    standard = STANDARD_SETS[name]
    try:
        rows = datasets.load_dataset(standard.hub_id, standard.config, split=standard.split,
                                     **({"data_files": standard.data_files} if standard.data_files else {}))
    except Exception as exc:
        raise DsparkError(
            f"could not load benchmark {name!r} from the hub ({standard.hub_id}: {type(exc).__name__}: {exc}); "
            f"without network access give a local copy instead: --suite {name}=PATH.jsonl") from exc
    return _rows_to_records(rows, standard, f"{standard.hub_id}[{standard.split}]", on_error, report)


def _rows_to_records(rows, standard: StandardSet | None, source: str, on_error: str,
                     report: LoadReport) -> list[PromptRecord]:
    adapt, records = _adapter(standard), []
    for index, row in enumerate(rows):
        report.read += 1
        obj = adapt(row)
        messages = parse_or_report(obj, f"{source} row {index + 1}", report, on_error,
                                   f"give rows with {' and '.join(standard.columns) if standard else 'a prompt shape'}")
        if messages is not None:
            records.append(PromptRecord.create(messages, str(obj.get("category") or "")))
    return records


def unseen_in_training(records: list[PromptRecord], training_prompts: Path) -> list[PromptRecord]:
    """`records`, after checking by content hash that none is among a dataset's prompts (any split)."""
    known = {record.id for record, _ in read_prompt_file(training_prompts)}
    overlap = [record.user_turns[0][:60] for record in records if record.id in known]
    if overlap:
        raise DsparkError(f"{len(overlap)} evaluation prompts are also training prompts in {training_prompts} "
                          f"(e.g. {overlap[0]!r}); evaluate on prompts the draft never saw")
    return records
