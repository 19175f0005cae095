"""Self-distillation data: the target answers every prompt itself, with its recommended sampling settings.

Output directory:
    responses.jsonl   one conversation per line (system/user turns + the target's assistant turns)
    manifest.json     target spec and revision, settings, counts, status
Resumable: lines are appended and flushed batch by batch; a rerun skips prompts already answered (a line
cut short by a kill is dropped) and refuses to mix in answers made with other settings or another target.
Answers to prompts no longer in the dataset (its prompts were replaced) are removed, and one regeneration at a
time writes a directory (a lock file; a second one is refused with a message).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from dspark_core.data.chat import render_ids
from dspark_core.data.prompts import PromptRecord
from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.decoding.drafter import Drafter
from dspark_core.errors import DsparkError
from dspark_core.models.packaged import PACKAGED_MODELS
from dspark_core.models.target import TargetModel
from dspark_core.paths import exclusive_writer, write_json_atomic
from dspark_core.settings import bounds_of, check_settings, setting

RESPONSES_FILE = "responses.jsonl"
MANIFEST_FILE = "manifest.json"


def recommended_sampling(target: TargetModel) -> SamplingConfig:
    """The model authors' settings for packaged models, else the model's generation_config, else T=1."""
    packaged = PACKAGED_MODELS.get(target.spec)
    if packaged and packaged.recommended_sampling:
        return SamplingConfig(**packaged.recommended_sampling)
    generation = getattr(target.model, "generation_config", None)
    if generation is not None and getattr(generation, "do_sample", False):
        return SamplingConfig(
            temperature=float(generation.temperature or 1.0),
            top_p=float(generation.top_p or 1.0),
            top_k=int(generation.top_k or 0),
        )
    return SamplingConfig(temperature=1.0)


@dataclass(frozen=True)
class RegenerationConfig:
    """How the target answers the prompts. Sampling settings left empty are the model's recommended ones."""

    max_new_tokens: int = setting(128, "Longest response the target writes per prompt", min=1)
    batch_size: int = setting(32, "Prompts answered together", min=1)
    seed: int = setting(0, "Sampling seed")
    temperature: float | None = setting(None, "Sampling temperature; empty: the model's recommended setting",
                                        **bounds_of(SamplingConfig, "temperature"))
    top_p: float | None = setting(None, "Top-p; empty: the model's recommended setting", **bounds_of(SamplingConfig, "top_p"))
    top_k: int | None = setting(None, "Top-k; empty: the model's recommended setting", **bounds_of(SamplingConfig, "top_k"))
    limit: int | None = setting(None, "Answer only the first N prompts; empty: all", min=1)

    def __post_init__(self) -> None:
        check_settings(self)

    def sampling_for(self, target: TargetModel) -> SamplingConfig:
        """The recommended sampling of `target`, with the settings given here in its place."""
        recommended = recommended_sampling(target)
        return SamplingConfig(
            temperature=recommended.temperature if self.temperature is None else self.temperature,
            top_p=recommended.top_p if self.top_p is None else self.top_p,
            top_k=recommended.top_k if self.top_k is None else self.top_k,
        )


def _read_answered(path: Path) -> list[tuple[str, str]]:
    """(id, line) of every answered prompt, in file order; truncates a trailing partial line left by a killed run."""
    if not path.exists():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(cut)
    answered = []
    for number, line in enumerate(data[:cut].decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                answered.append((json.loads(line)["id"], line))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DsparkError(f"{path}:{number} is not a response line ({exc}); delete the file to start over") from exc
    return answered


def _keep_current(path: Path, answered: list[tuple[str, str]], current: set[str]) -> tuple[set[str], int]:
    """Drop answers to prompts no longer in the dataset and repeated answers (the first one stays), rewriting the
    file atomically when anything goes; returns (ids kept, lines dropped)."""
    kept: dict[str, str] = {}
    for rid, line in answered:
        if rid in current and rid not in kept:
            kept[rid] = line
    dropped = len(answered) - len(kept)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept.values()), encoding="utf-8")
        os.replace(tmp, path)
    return set(kept), dropped


def regenerate_responses(
    target: TargetModel,
    prompts: list[tuple[PromptRecord, str]],
    out_dir: Path,
    config: RegenerationConfig = RegenerationConfig(),
    *,
    drafter: Drafter | None = None,
    progress: bool = True,
) -> dict:
    """Answer every (record, split) pair with the target; returns the final manifest.

    Prompts are answered in fixed batches (sorted by length, then id) whose sampling seed follows from the batch's
    index, so a resumed run writes exactly what an uninterrupted one would, at any temperature."""
    if not prompts:
        raise DsparkError("no prompts to answer: the prompt source is empty")
    sampling = config.sampling_for(target)
    prompts = prompts[: config.limit]
    settings = {"max_new_tokens": config.max_new_tokens, "seed": config.seed, "sampling": asdict(sampling),
                "chat_template": target.has_chat_template}
    if not sampling.greedy:  # sampled answers depend on the batches they were drawn in
        settings["batch_size"] = config.batch_size
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, responses_path = out_dir / MANIFEST_FILE, out_dir / RESPONSES_FILE
    with exclusive_writer(out_dir, "regenerating responses"):
        answered = _read_answered(responses_path)
        if manifest_path.exists() and answered:
            previous = json.loads(manifest_path.read_text())
            if previous.get("target_revision") != target.revision or previous.get("settings") != settings:
                raise DsparkError(
                    f"{out_dir} holds responses from {previous.get('target')!r} with settings {previous.get('settings')}; "
                    f"these would be mixed with new ones from {target.spec!r} with {settings}. Use another output "
                    f"directory or delete this one"
                )
        done, dropped = _keep_current(responses_path, answered, {r.id for r, _ in prompts})
        manifest = {
            "target": target.spec,
            "target_revision": target.revision,
            "target_dtype": str(target.dtype).removeprefix("torch."),  # bfloat16 answers part from float32 ones at near-ties
            "settings": settings,
            "status": "running",
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(manifest_path, manifest)

        ordered = sorted(prompts, key=lambda pair: (sum(len(c) for _, c in pair[0].messages), pair[0].id))
        batches = [ordered[i : i + config.batch_size] for i in range(0, len(ordered), config.batch_size)]
        engine = SpeculativeEngine(target, drafter)
        started = time.perf_counter()
        skipped: list[str] = []
        bar = tqdm(total=sum(r.id not in done for r, _ in prompts), desc="regenerating responses", disable=not progress)
        with open(responses_path, "a", encoding="utf-8") as handle:
            for index, batch in enumerate(batches):
                missing = sum(r.id not in done for r, _ in batch)
                if not missing:
                    continue
                # the whole batch again (its seed and companions fixed), keeping only the answers not written yet
                for line in _answer_batch(target, engine, batch, sampling, config, index, skipped):
                    if line["id"] not in done:
                        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                bar.update(missing)
        bar.close()

        counts = {"train": 0, "validation": 0}
        tokens = 0
        with open(responses_path, encoding="utf-8") as handle:
            for line in handle:
                obj = json.loads(line)
                counts[obj["split"]] += 1
                tokens += sum(obj["response_tokens"])
        manifest.update(
            status="complete",
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            conversations=counts["train"] + counts["validation"],
            splits=counts,
            response_tokens=tokens,
            skipped_too_long=sorted(set(skipped)),
            removed_stale_or_repeated=dropped,
            # this run only (a resumed or reused run takes less than the whole)
            seconds=round(time.perf_counter() - started, 2),
        )
        write_json_atomic(manifest_path, manifest)
    return manifest


def _answer_batch(target, engine, batch, sampling, config, batch_number, skipped) -> list[dict]:
    """Answer batch number `batch_number` turn by turn (all first turns together, then all second turns, ...),
    sampling with a seed of its own: batches are fixed, so a resumed run redraws exactly what it lost."""
    conversations = [[] for _ in batch]
    response_tokens = [[] for _ in batch]
    response_ids = [[] for _ in batch]
    finish = [[] for _ in batch]
    alive = list(range(len(batch)))
    turn = 0
    while alive:
        rows, prompt_ids = [], []
        for row in alive:
            record = batch[row][0]
            user_turns = record.user_turns
            if turn >= len(user_turns):
                continue
            if turn == 0 and record.system:
                conversations[row].append(("system", record.system))
            conversations[row].append(("user", user_turns[turn]))
            ids = render_ids(target, conversations[row], add_generation_prompt=True)
            if len(ids) + config.max_new_tokens > target.max_context:
                skipped.append(record.id)
                continue
            rows.append(row)
            prompt_ids.append(ids)
        if not rows:
            break
        result = engine.generate(
            prompt_ids,
            GenerationConfig(max_new_tokens=config.max_new_tokens, sampling=sampling,
                             seed=config.seed * 1_000_003 + batch_number * 1_000 + turn),
        )
        for row, output in zip(rows, result.outputs):
            conversations[row].append(("assistant", target.decode(output.tokens)))
            response_tokens[row].append(len(output.tokens))
            response_ids[row].append(output.tokens)
            finish[row].append(output.finish_reason)
        alive = rows
        turn += 1
    lines = []
    for (record, split), messages, counts, reasons, ids in zip(batch, conversations, response_tokens, finish, response_ids):
        if not counts:
            continue  # too long for the context even for its first turn (listed in the manifest)
        lines.append({
            "id": record.id,
            "split": split,
            "source": record.source,
            "messages": [{"role": r, "content": c} for r, c in messages],
            "response_tokens": counts,
            "finish_reasons": reasons,
            # The exact tokens the target produced (text round trips can re-tokenize differently).
            "response_ids": ids,
        })
    return lines


def read_responses(out_dir: Path) -> tuple[dict, list[dict]]:
    """The manifest and the conversations of a finished regeneration directory."""
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise DsparkError(f"{out_dir} has no {MANIFEST_FILE}; run `dspark data regenerate` first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") != "complete":
        raise DsparkError(f"regeneration in {out_dir} did not finish (status {manifest.get('status')!r}); rerun it to resume")
    conversations = []
    with open(out_dir / RESPONSES_FILE, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    conversations.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DsparkError(f"{out_dir / RESPONSES_FILE}:{number} is not a response line ({exc}); the file was "
                                      f"damaged: delete that line and run `dspark data regenerate` again to redo it") from None
    return manifest, conversations
