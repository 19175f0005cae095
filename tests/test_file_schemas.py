"""Every file the platform reads back, fed JSON of the wrong shape: a one-line user error naming the file, never
another exception (property-based, hypothesis). Each example starts from a real file the platform wrote and
breaks it: the whole value replaced, a field removed, a field's value replaced by arbitrary JSON. And prompt
files fuzzed with arbitrary Unicode (lone surrogates, control characters, very long lines)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspark_core.errors import DsparkError
from dspark_core.schemas import UnknownFieldsWarning

#: JSON as Python's json module reads it (NaN and Infinity included: it accepts them)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _locations(value, prefix=()):
    """Every (path of keys / indices) inside a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _locations(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            yield from _locations(child, (*prefix, index))


def _broken(valid):
    """The valid value with one location broken: removed (a dict's key) or replaced by arbitrary JSON."""

    @st.composite
    def strategy(draw):
        where = draw(st.sampled_from(list(_locations(valid))))
        value = json.loads(json.dumps(valid))
        if not where:
            return draw(json_values)
        parent = value
        for step in where[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(json_values)
        return value

    return strategy()


@dataclass
class Case:
    file: Path  # the file broken
    read: Callable[[], object]  # the platform's reader of it (and what consumes it first)
    line: bool = False  # a JSONL file: its first line is broken

    def original(self):
        text = self.file.read_text()
        return json.loads(text.splitlines()[0] if self.line else text)


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_target) -> dict[str, Case]:
    """One real file of each kind, written by the platform's own writers where it has them."""
    from test_drafters import _model

    from dspark_core.data.chat import tokenize_conversations
    from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
    from dspark_core.data.prompts import PromptRecord, read_prompt_file, write_prompts
    from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
    from dspark_core.data.sources import prompt_rounds
    from dspark_core.decoding.step_cost import load_profile
    from dspark_core.drafters.checkpoint import load_draft, save_draft
    from dspark_core.models import derive, registry, snapshot
    from dspark_core.models.spec import slugify
    from dspark_core.paths import _holder
    from dspark_core.training.state import load_training_state, save_training_state

    root = tmp_path_factory.mktemp("files")
    records = [PromptRecord.create([("user", f"Tell me about {topic}.")], "t") for topic in ("bees", "owls")]
    write_prompts(records, root / "prompts.jsonl", 0.5)
    regenerate_responses(tiny_target, [(r, "train") for r in records], root / "responses",
                         RegenerationConfig(max_new_tokens=4, batch_size=2), progress=False)
    conversations = read_responses(root / "responses")[1]
    build_feature_cache(tiny_target, conversations, root / "cache", CacheConfig(layer_ids=(0, 1), dtype="float32"),
                        progress=False)
    save_draft(_model(tiny_target), root / "draft", target=tiny_target)
    (root / "export").mkdir()
    shutil.copy(root / "draft" / "model.safetensors", root / "export" / "model.safetensors")
    (root / "export" / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    (root / "export" / "dspark_export.json").write_text(json.dumps(
        {"format": "hf", "source": json.loads((root / "draft" / "config.json").read_text())}))
    (root / "prompts.rounds.json").write_text(json.dumps({"settings": {"source": "self"}, "rounds": [
        {"round": 0, "seed": 0, "added": 2, "dropped": 0, "total": 2, "at": None}]}))
    home = root / "home"
    (home / "models" / "snapshots" / "m").mkdir(parents=True)
    (home / "models" / "registered.json").write_text(json.dumps(
        {"m": {"spec": "hf:org/m", "registered_at": "2026-12-05T00:00:00+00:00", "prompts": "self"}}))
    (home / "models" / "snapshots" / "m" / snapshot.SNAPSHOT_FILE).write_text(json.dumps({
        "spec": "hf:org/m", "source_kind": "hf", "source": "org/m", "revision": "a" * 40, "hub_commit": None,
        "created_at": "2026-12-05", "transformers_version": "5", "model_type": "llama", "num_layers": 2,
        "hidden_size": 8, "vocab_size": 16, "max_context": 64, "has_chat_template": True}))
    (root / "derived").mkdir()
    (root / "derived" / derive.LINEAGE_FILE).write_text(json.dumps(
        {"parent": "hf:org/m", "parent_revision": "a" * 40, "method": "quantize", "settings": {"bits": 4}, "stats": {}}))
    save_training_state(root / "state", {}, {}, {"step": 3, "epoch": 0, "cursor": 1, "config": {"steps": 9},
                                                 "cache": str(root / "cache"), "history": [], "world_size": 1,
                                                 "tokens_trained": 12})
    (root / "profile.json").write_text(json.dumps({
        "target_spec": "tiny", "target_revision": None, "device": "cpu", "dtype": "float32", "torch_version": "2",
        "context_tokens": 16, "rows": [1, 2], "widths": [1, 4], "ms": [[1.0, 2.0], [1.5, 3.0]], "repetitions": 3,
        "measured_at": "2026-12-05", "format": 1}))
    (root / ".held.holder.json").write_text(json.dumps({"pid": 1, "command": "dspark x", "since": "now"}))

    def in_home(read):
        def run():
            before = os.environ.get("DSPARK_HOME")
            os.environ["DSPARK_HOME"] = str(home)
            try:
                return read()
            finally:
                os.environ.pop("DSPARK_HOME") if before is None else os.environ.__setitem__("DSPARK_HOME", before)
        return run

    def features():
        cache = FeatureCache(root / "cache")
        return [cache[i] for i in range(len(cache))]

    return {
        "draft config.json": Case(root / "draft" / "config.json", lambda: load_draft(root / "draft", tiny_target)),
        "export record": Case(root / "export" / "dspark_export.json", lambda: load_draft(root / "export", tiny_target)),
        "cache manifest": Case(root / "cache" / "manifest.json", features),
        "responses manifest": Case(root / "responses" / "manifest.json", lambda: read_responses(root / "responses")),
        "responses line": Case(root / "responses" / "responses.jsonl", lambda: tokenize_conversations(
            tiny_target, read_responses(root / "responses")[1], 64), line=True),
        "prompt line": Case(root / "prompts.jsonl", lambda: read_prompt_file(root / "prompts.jsonl"), line=True),
        "prompt rounds": Case(root / "prompts.rounds.json", lambda: prompt_rounds(root / "prompts.jsonl")),
        "registered models": Case(home / "models" / "registered.json", in_home(lambda: (
            registry.registered_models(), registry.prompt_source_for("m")))),
        "snapshot record": Case(home / "models" / "snapshots" / "m" / snapshot.SNAPSHOT_FILE, in_home(lambda: (
            lambda s: (s.spec, s.revision))(snapshot.load_snapshot(home / "models" / "snapshots" / "m")))),
        "derived lineage": Case(root / "derived" / derive.LINEAGE_FILE, lambda: slugify((derive.lineage(root / "derived") or {})["parent"])),
        "training state": Case(root / "state" / "state.json", lambda: load_training_state(root / "state")),
        "step-cost profile": Case(root / "profile.json", lambda: load_profile(root / "profile.json").seconds(1, 2)),
        "lock holder": Case(root / ".held.holder.json", lambda: _holder(root / ".held.holder.json")),
    }


READERS = ["draft config.json", "export record", "cache manifest", "responses manifest", "responses line",
           "prompt line", "prompt rounds", "registered models", "snapshot record", "derived lineage", "training state",
           "step-cost profile", "lock holder"]


def test_every_case_reads_cleanly_as_written(cases):
    assert sorted(cases) == sorted(READERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown fields in what the platform wrote
        for case in cases.values():
            case.read()


@pytest.mark.parametrize("name", READERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_file_of_the_wrong_shape_is_a_one_line_error_naming_it(cases, name, data):
    case = cases[name]
    original_text = case.file.read_text()
    broken = data.draw(_broken(case.original()), label="written")
    lines = original_text.splitlines()
    try:
        text = json.dumps(broken)
        case.file.write_text("\n".join([text, *lines[1:]]) + "\n" if case.line else text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnknownFieldsWarning)  # a broken example may add a field
            case.read()
    except DsparkError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert str(case.file.parent) in message or case.file.parent.name in message, message
    finally:
        case.file.write_text(original_text)


def test_unknown_fields_are_ignored_with_one_warning_per_file(cases):
    case = cases["draft config.json"]
    original = case.file.read_text()
    try:
        case.file.write_text(json.dumps({**json.loads(original), "attention_sinks": 4}))
        with pytest.warns(UnknownFieldsWarning, match=r"config.json: ignoring field .*'attention_sinks'"):
            case.read()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            case.read()  # once per file
    finally:
        case.file.write_text(original)


def test_wrong_shapes_are_named_by_field():
    from dspark_core.schemas import DraftConfigFile, FileShapeError, ResponseLine, checked, parse_line

    with pytest.raises(FileShapeError, match=r"^f.json: expected a JSON object, got a list \(the whole file\); fix$"):
        checked([1, 2, 3], DraftConfigFile, where="f.json", fix="fix")
    with pytest.raises(FileShapeError, match=r"^r.jsonl:4: field 'messages': expected a JSON list, got a number; fix"):
        parse_line('{"id": "a", "split": "train", "messages": 5, "response_tokens": []}', ResponseLine,
                   where="r.jsonl:4", fix="fix")
    with pytest.raises(FileShapeError, match=r"field 'messages.0.content': missing"):
        parse_line('{"id": "a", "split": "train", "messages": [{"role": "user"}], "response_tokens": []}',
                   ResponseLine, where="r.jsonl:4", fix="fix")


# ---- prompt files: arbitrary Unicode -------------------------------------------------------------------------
unicode_text = st.text(alphabet=st.characters(categories=["L", "N", "Zs", "Cc", "Cs", "Co", "So"]), max_size=60)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(unicode_text, min_size=1, max_size=6), long_line=st.booleans(), raw=st.binary(max_size=30))
def test_prompt_lines_of_any_unicode_are_kept_or_reported_never_a_crash(tmp_path_factory, texts, long_line, raw):
    from dspark_core.data.prompts import MAX_LINE_BYTES, LoadReport, read_jsonl, read_prompt_file, write_prompts

    folder = tmp_path_factory.mktemp("unicode")
    lines = [json.dumps({"prompt": text}).encode() for text in texts]  # lone surrogates become \ud800 escapes
    lines.append(raw.replace(b"\n", b" "))  # bytes that need not be UTF-8 at all
    if long_line:
        lines.append(json.dumps({"prompt": "x" * MAX_LINE_BYTES}).encode())
    (folder / "source.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = LoadReport()
    records = read_jsonl(folder / "source.jsonl", report=report)
    assert all("\n" not in problem for problem in report.malformed)
    # what is kept is text: it is written and read back unchanged
    write_prompts(records, folder / "prompts.jsonl", 0.5)
    assert [record for record, _ in read_prompt_file(folder / "prompts.jsonl")] == records
