"""Self-distillation data: the target answers every prompt itself, with its recommended sampling settings.

Output directory:
    responses.jsonl   one conversation per line (system/user turns + the target's assistant turns)
    manifest.json     target spec and revision, settings, counts, status (and the server, when one answered)
Resumable: lines are appended and flushed as answers come; a rerun skips prompts already answered (a line
cut short by a kill is dropped) and refuses to mix in answers made with other settings or another target.
Answers to prompts no longer in the dataset (its prompts were replaced) are removed, and one regeneration at a
time writes a directory (a lock file; a second one is refused with a message).

The target answers either here, with the project's engine, in fixed batches with a seed each; across ranks
(torchrun) every rank answers its share of the batches into a part file of its own, and rank 0 merges the parts
into responses.jsonl in batch order at the end. Or through an OpenAI-compatible server (vLLM, SGLang; see
`served.py`), a bounded number of conversations at a time, in one process. Either way the file ends in the
same order: the prompts sorted by length, then id.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from dspark_core.data.chat import render_ids
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.served import ChatServer, Reply
from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.decoding.drafter import Drafter
from dspark_core.distributed import World, current_world
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.packaged import PACKAGED_MODELS
from dspark_core.models.target import TargetModel
from dspark_core.paths import exclusive_writer, write_json_atomic
from dspark_core.schemas import FileShapeError, ResponseLine, ResponsesManifestFile, parse_line, read_json
from dspark_core.settings import bounds_of, check_settings, setting

RESPONSES_FILE = "responses.jsonl"
MANIFEST_FILE = "manifest.json"
_REDO_LINE = ("the line is damaged: run `dspark data regenerate` again with the same settings (it drops damaged lines "
              "and answers their prompts again)")
_REDO_MANIFEST = "the manifest is damaged: delete the directory and run `dspark data regenerate` again"
#: the answers of one rank of a multi-rank run, until rank 0 merges them into RESPONSES_FILE
PART_PATTERN = "responses.part-*.jsonl"


def part_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"responses.part-{rank:03d}.jsonl"


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
    server: str | None = setting(None, "URL of an OpenAI-compatible chat-completions server (vLLM, SGLang) that serves "
                                       "the target, e.g. http://127.0.0.1:8000; empty: answer here with the project's "
                                       "engine")
    server_model: str | None = setting(None, "The name the server serves the target under (as GET /v1/models lists "
                                             "it); empty: the target's spec")
    concurrency: int = setting(16, "Conversations the server is asked at once (with --server)", min=1)
    server_timeout: float = setting(600.0, "Seconds one request to the server may take (with --server)", above=0)
    server_retry_seconds: float = setting(300.0, "How long a failing server (no connection, timeouts, HTTP 5xx or "
                                                 "429) is retried before the run stops; a rerun resumes", min=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.server is not None and not self.server.strip().startswith(("http://", "https://")):
            raise ConfigError(f"server {self.server!r} is not an http:// or https:// URL; pass the server's address, "
                              f"e.g. http://127.0.0.1:8000")
        if self.server_model and not self.server:
            raise ConfigError("server_model names the model a server serves; pass the server's URL too (--server)")

    def sampling_for(self, target: TargetModel) -> SamplingConfig:
        """The recommended sampling of `target`, with the settings given here in its place."""
        recommended = recommended_sampling(target)
        return SamplingConfig(
            temperature=recommended.temperature if self.temperature is None else self.temperature,
            top_p=recommended.top_p if self.top_p is None else self.top_p,
            top_k=recommended.top_k if self.top_k is None else self.top_k,
        )


def _read_answered(path: Path, damaged: list[str] | None = None) -> list[tuple[str, str]]:
    """(id, line) of every answered prompt, in file order; truncates a trailing partial line left by a killed run.
    A damaged line (not a response line) is an error, unless `damaged` collects it (file:line) for the caller to
    drop: its prompt is then simply answered again."""
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
                answered.append((parse_line(line, ResponseLine, where=f"{path}:{number}", fix=_REDO_LINE)["id"], line))
            except FileShapeError:
                if damaged is None:
                    raise
                damaged.append(f"{path.name}:{number}")
    return answered


def _answer_files(out_dir: Path) -> list[Path]:
    """responses.jsonl, then the part files ranks left (in rank order)."""
    return [out_dir / RESPONSES_FILE, *sorted(out_dir.glob(PART_PATTERN))]


def _consolidate(out_dir: Path, answered: list[tuple[str, str]], current: set[str], *, rewrite: bool = False) -> int:
    """Keep the first answer to every prompt still in the dataset, all in responses.jsonl (parts merged in and
    removed), rewriting it atomically when anything changes; returns the number of lines dropped (answers to
    prompts no longer there, repeats)."""
    kept: dict[str, str] = {}
    for rid, line in answered:
        if rid in current and rid not in kept:
            kept[rid] = line
    dropped = len(answered) - len(kept)
    parts = _answer_files(out_dir)[1:]
    if dropped or parts or rewrite:
        _replace_lines(out_dir / RESPONSES_FILE, kept.values())
        for part in parts:
            part.unlink()
    return dropped


def _replace_lines(path: Path, lines) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _canonical_order(prompts: list[tuple[PromptRecord, str]]) -> list[tuple[PromptRecord, str]]:
    """The order prompts are answered (local batches) and listed in responses.jsonl: by length, then id."""
    return sorted(prompts, key=lambda pair: (sum(len(c) for _, c in pair[0].messages), pair[0].id))


def _settings(target: TargetModel, config: RegenerationConfig, sampling: SamplingConfig) -> dict:
    """What the answers depend on: a rerun with other settings may not append to them."""
    settings = {"max_new_tokens": config.max_new_tokens, "seed": config.seed, "sampling": asdict(sampling),
                "chat_template": target.has_chat_template}
    if config.server:
        settings["answered_by"] = "server"  # other numerics than this engine's: never mixed with local answers
    elif not sampling.greedy:  # sampled answers depend on the batches they were drawn in
        settings["batch_size"] = config.batch_size
    return settings


def regenerate_responses(
    target: TargetModel,
    prompts: list[tuple[PromptRecord, str]],
    out_dir: Path,
    config: RegenerationConfig = RegenerationConfig(),
    *,
    drafter: Drafter | None = None,
    progress: bool = True,
    world: World | None = None,
) -> dict:
    """Answer every (record, split) pair with the target; returns the final manifest (on every rank).

    Locally, prompts are answered in fixed batches (sorted by length, then id) whose sampling seed follows from the
    batch's index, so a resumed run writes exactly what an uninterrupted one would, at any temperature, and any
    number of ranks (`world`, by default the process group this process joined) writes what one does. With
    `config.server` an OpenAI-compatible server answers instead, after a check that it serves the target."""
    if not prompts:
        raise DsparkError("no prompts to answer: the prompt source is empty")
    world = world or current_world()
    if config.server and world.size > 1:
        raise DsparkError("--server sends every prompt to one server from one process: drop --nproc (or torchrun) "
                          "and raise --concurrency instead")
    sampling = config.sampling_for(target)
    prompts = prompts[: config.limit]
    ordered = _canonical_order(prompts)
    settings = _settings(target, config, sampling)
    with ExitStack() as job:
        server = None
        if config.server:  # checked before anything is written
            server = job.enter_context(ChatServer(config.server, config.server_model or target.spec,
                                                  concurrency=config.concurrency, timeout=config.server_timeout,
                                                  retry_seconds=config.server_retry_seconds))
            server.check(target)
        manifest = world.on_main(lambda: _begin(job, target, prompts, out_dir, settings, server, config))
        done = {rid for rid, _ in _read_answered(out_dir / RESPONSES_FILE)}  # one file now: rank 0 merged any parts
        started = time.perf_counter()
        if server is None:
            skipped, notes = _answer_in_batches(target, drafter, ordered, done, out_dir, config, sampling, progress,
                                                world), {}
        else:
            skipped, notes = _answer_through_server(server, target, ordered, done, out_dir, config, sampling, progress)
        skipped = sorted({rid for share in world.gather(skipped) for rid in share})  # also: every rank is done
        return world.on_main(lambda: _finish(out_dir, manifest, ordered, skipped, notes, started))


def _begin(job: ExitStack, target: TargetModel, prompts, out_dir: Path, settings: dict, server: ChatServer | None,
           config: RegenerationConfig) -> dict:
    """Rank 0, before any answer: hold the directory for the job, refuse mixing, merge what earlier runs left
    into responses.jsonl, write the "running" manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job.enter_context(exclusive_writer(out_dir, "regenerating responses"))
    manifest_path = out_dir / MANIFEST_FILE
    damaged: list[str] = []  # lines a disk or an editor damaged: dropped, and their prompts answered again
    answered = [pair for path in _answer_files(out_dir) for pair in _read_answered(path, damaged)]
    if manifest_path.exists() and answered:
        previous = read_json(manifest_path, ResponsesManifestFile, fix=_REDO_MANIFEST)
        if previous.get("target_revision") != target.revision or previous.get("settings") != settings:
            raise DsparkError(
                f"{out_dir} holds responses from {previous.get('target')!r} with settings {previous.get('settings')}; "
                f"these would be mixed with new ones from {target.spec!r} with {settings}. Use another output "
                f"directory or delete this one"
            )
    dropped = _consolidate(out_dir, answered, {r.id for r, _ in prompts}, rewrite=bool(damaged))
    manifest = {
        "target": target.spec,
        "target_revision": target.revision,
        # bfloat16 answers part from float32 ones at near-ties; a server's precision is its own
        "target_dtype": None if server else str(target.dtype).removeprefix("torch."),
        "settings": settings,
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "removed_stale_or_repeated": dropped,
        "removed_damaged": damaged,
    }
    if server:
        manifest["server"] = {"url": server.url, "model": server.model, "checked_by": server.token_check,
                              "response_ids": "the server's" if server.returns_token_ids else "re-tokenized text",
                              "concurrency": config.concurrency}
    write_json_atomic(manifest_path, manifest)
    return manifest


def _finish(out_dir: Path, manifest: dict, ordered, skipped: list[str], notes: dict, started: float) -> dict:
    """Rank 0, after every rank is done: responses.jsonl with every answer (parts merged in) in the canonical
    order, and the "complete" manifest."""
    responses_path = out_dir / RESPONSES_FILE
    in_file = _read_answered(responses_path)
    lines = dict(in_file)
    for part in _answer_files(out_dir)[1:]:
        for rid, line in _read_answered(part):
            lines.setdefault(rid, line)
    order = [r.id for r, _ in ordered if r.id in lines]
    if [rid for rid, _ in in_file] != order:
        _replace_lines(responses_path, (lines[rid] for rid in order))
    for part in _answer_files(out_dir)[1:]:
        part.unlink()
    counts = {"train": 0, "validation": 0}
    tokens = 0
    for rid in order:
        obj = json.loads(lines[rid])
        counts[obj["split"]] += 1
        tokens += sum(obj["response_tokens"])
    manifest = dict(manifest)
    if "server" in manifest:
        manifest["server"] = {**manifest["server"], **notes}
    manifest.update(
        status="complete",
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        conversations=counts["train"] + counts["validation"],
        splits=counts,
        response_tokens=tokens,
        skipped_too_long=skipped,
        # this run only (a resumed or reused run takes less than the whole)
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return manifest


# ---- local answers, in fixed batches, shared among ranks -------------------------------------------------
def _answer_in_batches(target, drafter, ordered, done: set[str], out_dir: Path, config: RegenerationConfig,
                       sampling: SamplingConfig, progress: bool, world: World) -> list[str]:
    """This rank's share of the batches that still miss answers, appended to its file (responses.jsonl alone, a
    part file of its own among ranks); returns the ids skipped as too long for the context."""
    batches = [ordered[i : i + config.batch_size] for i in range(0, len(ordered), config.batch_size)]
    # Shared out among ranks after what is done is left out, so a resumed run's work is spread evenly too.
    unfinished = [index for index, batch in enumerate(batches) if any(r.id not in done for r, _ in batch)]
    mine = world.shard(unfinished)
    path = out_dir / RESPONSES_FILE if world.size == 1 else part_path(out_dir, world.rank)
    engine = SpeculativeEngine(target, drafter)
    skipped: list[str] = []
    bar = tqdm(total=sum(r.id not in done for index in mine for r, _ in batches[index]), desc="regenerating responses",
               disable=not progress or not world.is_main)
    with open(path, "a", encoding="utf-8") as handle:
        for index in mine:
            batch = batches[index]
            # the whole batch again (its seed and companions fixed), keeping only the answers not written yet
            for line in _answer_batch(target, engine, batch, sampling, config, index, skipped):
                if line["id"] not in done:
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(sum(r.id not in done for r, _ in batch))
    bar.close()
    return skipped


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


# ---- answers through a server ----------------------------------------------------------------------------
def _answer_through_server(server: ChatServer, target: TargetModel, ordered, done: set[str], out_dir: Path,
                           config: RegenerationConfig, sampling: SamplingConfig, progress: bool) -> tuple[list[str], dict]:
    """Every unanswered conversation, `config.concurrency` at a time, each appended to responses.jsonl as soon as
    it is complete. When one fails for good, those in flight are still written, then its error is raised."""
    pending = iter([pair for pair in ordered if pair[0].id not in done])
    tokenizer_lock = threading.Lock()  # the worker threads render and tokenize one at a time
    skipped: list[str] = []
    notes: Counter = Counter()
    failure: BaseException | None = None
    running: set[Future] = set()
    bar = tqdm(total=sum(r.id not in done for r, _ in ordered), desc="regenerating responses (server)",
               disable=not progress)
    pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="regenerate")

    def top_up() -> None:
        while failure is None and len(running) < 2 * config.concurrency:
            pair = next(pending, None)
            if pair is None:
                return
            running.add(pool.submit(_converse, server, target, *pair, config, sampling, tokenizer_lock))

    try:
        with open(out_dir / RESPONSES_FILE, "a", encoding="utf-8") as handle:
            top_up()
            synced = time.monotonic()
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        continue
                    try:
                        line, line_notes, line_skipped = future.result()
                    except Exception as exc:  # noqa: BLE001 - the first failure is raised once the others are in
                        failure = failure or exc
                        server.stop()
                        for waiting in running:
                            waiting.cancel()  # those not started yet; the others end at their next request
                        continue
                    if line is not None:
                        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                    notes.update(line_notes)
                    skipped.extend(line_skipped)
                    bar.update(1)
                handle.flush()  # a killed process loses nothing flushed; fsync a second at most apart
                if time.monotonic() - synced > 1.0 or not running:
                    os.fsync(handle.fileno())
                    synced = time.monotonic()
                top_up()
    finally:
        # Normally nothing is left running here. After an interrupt, requests still in flight are not waited
        # for: closing the connection (the caller's ChatServer) ends them.
        server.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    if failure is not None:
        raise failure
    return skipped, {key: notes[key] for key in ("retokenized_differently", "changed_by_template")}


def _converse(server: ChatServer, target: TargetModel, record: PromptRecord, split: str, config: RegenerationConfig,
              sampling: SamplingConfig, tokenizer_lock: threading.Lock) -> tuple[dict | None, Counter, list[str]]:
    """One conversation through the server, turn by turn as locally: (its line or None, notes, ids skipped)."""
    conversation: list[tuple[str, str]] = []
    counts, reasons, all_ids = [], [], []
    notes: Counter = Counter()
    skipped: list[str] = []
    context = min(target.max_context, server.max_model_len or target.max_context)
    for turn, user in enumerate(record.user_turns):
        if turn == 0 and record.system:
            conversation.append(("system", record.system))
        conversation.append(("user", user))
        with tokenizer_lock:
            prompt_ids = render_ids(target, conversation, add_generation_prompt=True)
        if len(prompt_ids) + config.max_new_tokens > context:
            skipped.append(record.id)
            break
        reply = server.chat(target, conversation, max_tokens=config.max_new_tokens, sampling=sampling,
                            seed=_request_seed(config.seed, record.id, turn))
        with tokenizer_lock:
            ids, reproduced = _response_ids(server, target, conversation, prompt_ids, reply)
        if reply.token_ids is None:
            notes["changed_by_template"] += not reproduced
            # the server's own count: a re-tokenization that differs from what it generated shows here
            notes["retokenized_differently"] += reply.completion_tokens not in (None, len(ids))
        conversation.append(("assistant", reply.text))
        counts.append(len(ids))
        reasons.append(reply.finish_reason)
        all_ids.append(ids)
    if not counts:
        return None, notes, skipped
    return {
        "id": record.id,
        "split": split,
        "source": record.source,
        "messages": [{"role": r, "content": c} for r, c in conversation],
        "response_tokens": counts,
        "finish_reasons": reasons,
        "response_ids": all_ids,
    }, notes, skipped


def _request_seed(seed: int, prompt_id: str, turn: int) -> int:
    """A sampling seed of each request's own (servers that take one draw reproducibly)."""
    return (seed * 1_000_003 + zlib.crc32(prompt_id.encode()) * 1_000 + turn) % 2**31


def _response_ids(server: ChatServer, target: TargetModel, conversation, prompt_ids: list[int],
                  reply: Reply) -> tuple[list[int], bool]:
    """(the answer's token ids as the local engine stores them, whether the chat template reproduces the text).

    The server's own ids where it returns them (they must decode to its text). Otherwise the text re-tokenized
    with the target's tokenizer, checked against its chat template: rendering the conversation with the answer
    must give the prompt, then these tokens, then (for an answer the model ended) its end-of-turn token."""
    if reply.token_ids is not None:
        if target.decode(reply.token_ids) != reply.text:
            raise DsparkError(f"the server at {server.url} returned token ids that do not decode to the answer's text "
                              f"with {target.spec!r}'s tokenizer: it serves another tokenizer; start it with the "
                              f"target's own files")
        return list(reply.token_ids), True
    text_ids = list(target.tokenizer(reply.text, add_special_tokens=False)["input_ids"])
    rendered = render_ids(target, [*conversation, ("assistant", reply.text)], add_generation_prompt=False)
    span = rendered[len(prompt_ids):] if rendered[: len(prompt_ids)] == prompt_ids else []
    reproduced = span[: len(text_ids)] == text_ids
    if reply.finish_reason != "eos":
        return text_ids, reproduced
    following = span[len(text_ids)] if reproduced and len(span) > len(text_ids) else None
    return text_ids + [following if following in target.eos_token_ids else _end_of_turn(target)], reproduced


def _end_of_turn(target: TargetModel) -> int:
    eos = target.tokenizer.eos_token_id
    return eos if eos in target.eos_token_ids else min(target.eos_token_ids)


def read_responses(out_dir: Path) -> tuple[dict, list[dict]]:
    """The manifest and the conversations of a finished regeneration directory."""
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise DsparkError(f"{out_dir} has no {MANIFEST_FILE}; run `dspark data regenerate` first")
    manifest = read_json(manifest_path, ResponsesManifestFile, fix=_REDO_MANIFEST)
    if manifest.get("status") != "complete":
        raise DsparkError(f"regeneration in {out_dir} did not finish (status {manifest.get('status')!r}); rerun it to resume")
    conversations = []
    with open(out_dir / RESPONSES_FILE, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                conversations.append(parse_line(line, ResponseLine, where=f"{out_dir / RESPONSES_FILE}:{number}",
                                                fix=_REDO_LINE))
    return manifest, conversations
