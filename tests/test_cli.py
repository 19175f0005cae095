"""The `dspark` command line on the tiny model: output, switches, and clear errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY, run_cli


def _generate(capsys, *extra):
    return run_cli(["generate", "--target", TINY, "--max-new-tokens", "12", *extra], capsys)


def test_generate_json_reports_text_tokens_and_stats(capsys, tiny_target):
    code, out, err = _generate(capsys, "--prompt", "a b a b a b", "--drafter", "prompt-lookup", "--json", "--compare")
    assert code == 0, err
    report = json.loads(out)
    (request,) = report["requests"]
    assert len(request["tokens"]) == 12 and isinstance(request["text"], str) and request["tau"] >= 1
    assert report["target_revision"] == tiny_target.revision
    assert report["identical_to_autoregressive"] is True
    for key in ("tau", "prefix_accept", "cond_accept", "rounds", "tokens_per_s", "draft_ms_per_round", "verify_ms_per_round"):
        assert key in report["stats"]


def test_no_speculative_flag_disables_the_drafter(capsys):
    code, out, _ = _generate(capsys, "--prompt", "hello", "--drafter", "prompt-lookup", "--no-speculative", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["drafter"] == "none" and report["stats"]["tau"] == 1.0 and report["stats"]["rounds"] == 12


def test_several_prompts_are_decoded_as_a_batch(capsys):
    code, out, _ = _generate(capsys, "--prompt", "first", "--prompt", "a much longer second prompt", "--json",
                             "--drafter", f"draft-lm:{TINY}", "--compare")
    assert code == 0
    report = json.loads(out)
    assert len(report["requests"]) == 2 and report["stats"]["requests"] == 2
    assert report["identical_to_autoregressive"] is True


def test_generate_prints_a_table(capsys):
    code, out, _ = _generate(capsys, "--prompt", "hello", "--drafter", f"draft-lm:{TINY}", "--compare")
    assert code == 0
    assert "decoding statistics" in out and "speed-up over autoregressive" in out and "identical: True" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "   "], "the prompt is empty"),
        (["--prompt", "word " * 1100], "has a context of 1024 tokens"),
        (["--prompt", "hi", "--max-new-tokens", "5000"], "lower --max-new-tokens to at most"),
        (["--prompt", "hi", "--drafter", "medusa"], "unknown drafter 'medusa'"),
        (["--prompt", "hi", "--chat", "--drafter", "none", "--temperature", "-1"], "--temperature"),
    ],
)
def test_bad_generate_input_gives_clear_error(capsys, args, message):
    code, out, err = _generate(capsys, *args)
    assert code != 0
    assert message in err + out


def test_unknown_target_gives_clear_error(capsys):
    code, _, err = run_cli(["generate", "--target", "llama-9000", "--prompt", "hi"], capsys)
    assert code == 2 and "unknown model spec 'llama-9000'" in err


def test_drafter_with_other_vocabulary_is_refused(capsys, tiny_target, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_target.snapshot.path)
    tokenizer.add_tokens(["<extra_token_only_in_draft>"])
    model = AutoModelForCausalLM.from_pretrained(tiny_target.snapshot.path)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "other-vocab")
    tokenizer.save_pretrained(tmp_path / "other-vocab")
    code, _, err = _generate(capsys, "--prompt", "hi", "--drafter", f"draft-lm:{tmp_path / 'other-vocab'}")
    assert code == 2
    assert "different vocabulary" in err and "shares the target's tokenizer" in err


def test_models_commands(capsys, tiny_target):
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0 and "smollm2-135m" in out and "gemma3-270m" in out and "tiny:smollm2-135m" in out
    code, out, _ = run_cli(["models", "show", TINY], capsys)
    assert code == 0 and json.loads(out)["revision"] == tiny_target.revision
    code, out, _ = run_cli(["models", "import", TINY], capsys)
    assert code == 0 and "imported" in out
    code, _, err = run_cli(["models", "show", "nope"], capsys)
    assert code == 2 and "unknown model spec 'nope'" in err


def test_data_chain_on_the_command_line(capsys, tmp_path, tiny_target):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "What is a cache?"}\n{"turns": ["Name three colours."]}\nnot json\n'
                      '{"messages": [{"role": "user", "content": "Say hi."}]}\n')
    code, out, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", "cli-chain",
                              "--validation-fraction", "0"], capsys)
    assert code == 0, err
    assert f"{source}:3" in out and "malformed 1" in out and "train" in out
    code, out, err = run_cli(["data", "regenerate", "--target", TINY, "--dataset", "cli-chain",
                              "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    assert "conversations" in out and "temperature" in out
    code, out, err = run_cli(["data", "cache", "--target", TINY, "--dataset", "cli-chain", "--layer-ids", "0,2",
                              "--dtype", "float16"], capsys)
    assert code == 0, err
    assert "assistant tokens" in out
    code, _, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", "x", "--on-error", "raise"], capsys)
    assert code == 2 and f"{source}:3" in err


def test_data_steps_out_of_order_give_clear_errors(capsys):
    code, _, err = run_cli(["data", "regenerate", "--target", TINY, "--dataset", "never-made"], capsys)
    assert code == 2 and "run `dspark data prompts` first" in err
    code, _, err = run_cli(["data", "cache", "--target", TINY, "--dataset", "never-made"], capsys)
    assert code == 2 and "run `dspark data regenerate` first" in err


def test_train_export_eval_on_the_command_line(capsys, tiny_target):
    """The whole chain through the CLI's thin commands (the library's recipes), ending in the metrics store."""
    prompts = [f"Give me example number {i} of a short sentence." for i in range(8)]
    source = Path(os.environ["DSPARK_HOME"]) / "chain-prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    steps = [
        ["data", "prompts", "--source", str(source), "--dataset", "cli-eval", "--validation-fraction", "0.5"],
        ["data", "regenerate", "--target", TINY, "--dataset", "cli-eval", "--max-new-tokens", "8"],
        ["data", "cache", "--target", TINY, "--dataset", "cli-eval", "--layer-ids", "0,1", "--dtype", "float32"],
        ["train", "--target", TINY, "--dataset", "cli-eval", "--steps", "3", "--draft-vocab", "128", "--block-size", "4"],
    ]
    for args in steps:
        code, out, err = run_cli(args, capsys)
        assert code == 0, (args, err)
    checkpoint = next(Path(os.environ["DSPARK_HOME"], "checkpoints", "tiny-smollm2-135m", "dspark").glob("*/draft"))
    code, out, err = run_cli(["export", str(checkpoint)], capsys)
    assert code == 0, err
    export = next(Path(os.environ["DSPARK_HOME"], "exports", "tiny-smollm2-135m", "dspark").glob("*-speculators"))
    code, out, err = run_cli(["eval", "--target", TINY, "--drafter", str(export), "--dataset", "cli-eval",
                              "--max-prompts", "2", "--max-new-tokens", "8", "--suite", "validation",
                              "--suite", "heldout-v1"], capsys)
    assert code == 0, err
    assert "greedy output identical to autoregressive (dspark): True" in out and "recorded" in out
    assert "math · heldout-v1" in out and "code · heldout-v1" in out  # two prompts: one from each of two domains
    code, out, err = run_cli(["sql", "SELECT DISTINCT benchmark FROM acceptance_metrics ORDER BY 1", "--json"], capsys)
    assert [json.loads(line)["benchmark"] for line in out.splitlines()] == ["held-out", "heldout-v1"]
    # the same draft by context length, the context filled with the dataset's regenerated conversations
    code, out, err = run_cli(["context-sweep", "--target", TINY, "--drafter", str(export), "--dataset", "cli-eval",
                              "--lengths", "48,160", "--prompts-per-length", "1", "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    assert "draft trained on ≤" in out and "recorded" in out
    code, out, err = run_cli(["sql", "SELECT DISTINCT context_bucket FROM acceptance_metrics WHERE benchmark = "
                                     "'context-sweep:turns' ORDER BY 1", "--json"], capsys)
    assert [json.loads(line)["context_bucket"] for line in out.splitlines()] == ["ctx-160", "ctx-48"]
    # by default fewer draft tokens are verified per round than the draft's γ (4); asking for more than γ gets γ:
    # a separate measurement, recorded as such
    code, out, err = run_cli(["eval", "--target", TINY, "--drafter", str(export), "--dataset", "cli-eval",
                              "--max-prompts", "2", "--max-new-tokens", "8", "--block-size", "9", "--suite", "validation"],
                             capsys)
    assert code == 0, err
    assert "greedy output identical to autoregressive (dspark): True" in out
    code, out, err = run_cli(["sql", "SELECT drafter, block_size FROM acceptance_metrics WHERE metric = 'tau' "
                                     "AND domain = 'all' AND benchmark = 'held-out' ORDER BY block_size DESC", "--json"],
                             capsys)
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [
        {"drafter": "dspark", "block_size": 4}, {"drafter": "dspark", "block_size": 2}]
    code, out, err = run_cli(["sql", "SELECT max(position) AS p FROM acceptance_metrics WHERE block_size = 2 "
                                     "AND position IS NOT NULL", "--json"], capsys)
    assert code == 0 and json.loads(out.splitlines()[0])["p"] <= 2
    # calibrate the confidences, then evaluate the calibrated draft with scheduled verification
    code, out, err = run_cli(["calibrate", "--target", TINY, "--drafter", str(checkpoint), "--max-prompts", "4",
                              "--max-new-tokens", "6"], capsys)
    assert code == 0, err
    assert "calibrated draft:" in out and (checkpoint.parent / "calibrated" / "config.json").is_file()
    code, out, err = run_cli(["eval", "--target", TINY, "--drafter", str(checkpoint.parent / "calibrated"),
                              "--dataset", "cli-eval", "--max-prompts", "2", "--max-new-tokens", "8",
                              "--schedule", "scheduled", "--block-size", "4", "--suite", "validation"], capsys)
    assert code == 0, err
    assert "greedy output identical to autoregressive (dspark): True" in out
    code, out, err = run_cli(["sql", "SELECT DISTINCT schedule FROM acceptance_metrics WHERE metric = 'tau' "
                                     "ORDER BY schedule", "--json"], capsys)
    assert [json.loads(line)["schedule"] for line in out.splitlines()] == ["fixed", "scheduled"]
    code, out, err = run_cli(["sql", "SELECT count(*) AS n FROM acceptance_metrics WHERE metric = 'ece'", "--json"],
                             capsys)
    assert json.loads(out.splitlines()[0])["n"] >= 8  # 4 positions, after and before


def test_profile_measures_stores_and_prints_the_step_costs(capsys):
    args = ["profile", "--target", TINY, "--rows", "1,2", "--max-width", "3", "--context-tokens", "16",
            "--repetitions", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "measured now (" in out and "1 tok" in out  # none stored yet, or one of another shape
    code, out, err = run_cli([*args, "--json"], capsys)
    profile = json.loads(out)
    assert profile["rows"] == [1, 2] and len(profile["ms"][0]) == 3 and profile["target_spec"] == TINY
    code, out, err = run_cli(["generate", "--target", TINY, "--prompt", "x", "--schedule", "sometimes"], capsys)
    # refused by the option itself, before the model loads, naming the option and the choices
    assert code == 2 and "'--schedule'" in err and "'sometimes' is not one of 'fixed', 'threshold', 'scheduled'" in err


def test_unknown_head_or_drafter_is_a_clear_error(capsys):
    code, _, err = run_cli(["train", "--target", TINY, "--head", "bogus"], capsys)
    assert code == 2 and "unknown sequential head 'bogus'" in err and "Traceback" not in err
    code, _, err = run_cli(["train", "--target", TINY, "--drafter", "medusa"], capsys)
    assert code == 2 and "'medusa' is not one of 'dspark', 'dflash', 'eagle3'" in err and "Traceback" not in err
