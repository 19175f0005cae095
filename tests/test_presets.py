"""Training presets: the reference recipe builds the module and the loss its table names; the soft cross-entropy
and the regression weight do what they say; settings given explicitly override a preset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY, run_cli
from dspark_core.data.feature_cache import default_layer_ids
from dspark_core.training.losses import LossWeights, draft_losses
from dspark_core.training.presets import apply_preset, preset_config
from dspark_core.training.trainer import TrainConfig, build_model, learning_rate, make_optimizer, settings_identity
from test_training import greedy_cache  # noqa: F401  (the module fixture: the tiny target's cached answers)


class _Target:
    """What a preset reads of a target: its depth and vocabulary (SmolLM2-135M's)."""

    num_layers, vocab_size = 30, 49152


def test_the_cpu_preset_is_the_defaults():
    assert preset_config("cpu", _Target(), algorithm="eagle3") == TrainConfig(algorithm="eagle3")


@pytest.mark.parametrize("algorithm", ["dspark", "dflash", "eagle3"])
def test_the_reference_preset_is_the_reference_table(algorithm):
    config = preset_config("reference", _Target(), algorithm=algorithm, steps=1000)
    assert config.layer_ids == (1, 8, 14, 20, 27) == default_layer_ids(30, 5)  # 5 layers, evenly from 1 to L-3
    assert config.block_size == 7 and config.max_length == 4096 and config.draft_vocab_size == 49152  # full
    assert (config.adam_beta1, config.adam_beta2, config.weight_decay) == (0.9, 0.999, 0.0)
    assert config.warmup_steps == 40 and config.learning_rate == 6e-4  # 4% of the steps
    assert config.loss.feature == 0.0  # the reference regresses no hidden state
    if algorithm == "eagle3":
        assert config.num_layers == 1 and config.loss.ce_target == "distribution" and config.loss.ce == 1.0
        assert config.anchors_per_sequence == 4096  # every position of a sequence up to 4096 tokens
        assert math.isclose(math.exp(-1 / config.loss.decay), 0.8)  # step weights 0.8^k
    else:
        assert config.num_layers == 5 and config.anchors_per_sequence == 512 and config.loss.decay == 4.0
        assert config.loss.ce_target == "token"
    if algorithm == "dspark":
        assert (config.loss.ce, config.loss.tv, config.loss.conf) == (0.1, 0.9, 1.0)
        assert config.head == "markov" and config.head_rank == 256
    if algorithm == "dflash":  # cross-entropy alone, no head: what DFlash fixes
        assert (config.loss.ce, config.loss.tv, config.loss.conf, config.head) == (1.0, 0.0, 0.0, "none")


def test_given_settings_override_the_preset():
    settings = apply_preset("reference", "dspark", 30, 49152, {"num_layers": 2, "warmup_steps": 5, "loss": {"tv": 0.5}})
    assert settings["num_layers"] == 2 and settings["block_size"] == 7
    assert settings["loss"] == {"ce": 0.1, "tv": 0.5, "conf": 1.0, "decay": 4.0, "feature": 0.0}
    assert "warmup_ratio" not in settings and settings["warmup_steps"] == 5  # an explicit warmup wins


def test_the_reference_preset_builds_the_module_it_names(tiny_target, greedy_cache):  # noqa: F811
    layers = tuple(greedy_cache.layer_ids)
    for algorithm, depth in (("dspark", 5), ("dflash", 5), ("eagle3", 1)):
        config = preset_config("reference", tiny_target, algorithm=algorithm, layer_ids=layers)
        model = build_model(tiny_target, greedy_cache, config)
        assert model.config.target_layer_ids == layers
        assert model.draft_vocab.numel() == tiny_target.vocab_size  # the full vocabulary
        assert model.config.block_size == 7
        assert getattr(model.config, "num_layers", 1) == depth
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], config)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999) and optimizer.param_groups[0]["weight_decay"] == 0.0


def _rows(m: int = 12, n: int = 20, gamma: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    draft_vocab = torch.arange(0, 2 * n, 2)  # every other token id of a 2n-token vocabulary
    targets = draft_vocab[torch.randint(0, n, (m,), generator=generator)]
    return (torch.randn(m, n, generator=generator, requires_grad=True), draft_vocab, targets,
            torch.arange(m) % gamma, gamma, generator)


def test_soft_cross_entropy_equals_hard_cross_entropy_on_a_one_hot_target():
    logits, draft_vocab, targets, positions, gamma, _ = _rows()
    one_hot = torch.full((len(targets), 2 * logits.shape[1]), -1e4)
    one_hot[torch.arange(len(targets)), targets] = 0.0  # the target's whole mass on the data's token
    hard = draft_losses(logits, one_hot, targets, positions, draft_vocab, gamma, LossWeights())
    soft = draft_losses(logits, one_hot, targets, positions, draft_vocab, gamma, LossWeights(ce_target="distribution"))
    assert torch.allclose(soft.ce, hard.ce, rtol=1e-6) and hard.ce > 0
    spread = torch.randn(len(targets), 2 * logits.shape[1])  # and differs from it when the target is not one-hot
    assert not torch.allclose(
        draft_losses(logits, spread, targets, positions, draft_vocab, gamma, LossWeights(ce_target="distribution")).ce,
        draft_losses(logits, spread, targets, positions, draft_vocab, gamma, LossWeights()).ce)


def test_soft_cross_entropy_gradient_pulls_the_draft_to_the_target_distribution():
    logits, draft_vocab, targets, positions, gamma, generator = _rows()
    target_logits = torch.full((len(targets), 2 * logits.shape[1]), -1e4)
    target_logits[:, draft_vocab] = torch.randn(len(targets), logits.shape[1], generator=generator)
    weights = LossWeights(ce=1.0, tv=0.0, conf=0.0, ce_target="distribution")
    draft_losses(logits, target_logits, targets, positions, draft_vocab, gamma, weights).total.backward()
    # d/dz of -Σ p log softmax(z) is softmax(z) - p, each row weighted as the loss weights it
    w = torch.exp(-positions.float() / weights.decay)
    expected = (logits.detach().softmax(-1) - target_logits[:, draft_vocab].softmax(-1)) * (w / w.sum())[:, None]
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_a_regression_weight_of_zero_removes_the_terms_gradient():
    logits, draft_vocab, targets, positions, gamma, generator = _rows()
    target_logits = torch.randn(len(targets), 2 * logits.shape[1], generator=generator)
    draft_hidden = torch.randn(len(targets), 8, generator=generator, requires_grad=True)
    target_hidden = torch.randn(len(targets), 8, generator=generator)
    for feature, moved in ((1.0, True), (0.0, False)):
        draft_hidden.grad = None
        terms = draft_losses(logits, target_logits, targets, positions, draft_vocab, gamma,
                             LossWeights(feature=feature), draft_hidden=draft_hidden, target_hidden=target_hidden)
        terms.total.backward()
        assert bool(draft_hidden.grad.abs().sum() > 0) == moved


def test_warmup_ratio_sets_the_warmup_and_new_settings_keep_old_runs_where_they_were():
    config = TrainConfig(steps=500, warmup_ratio=0.04)
    assert config.warmup_steps == 20 and learning_rate(19, config) == config.learning_rate
    # settings added since runs were first saved leave the identity of a run that uses their old values alone
    identity = settings_identity(TrainConfig())
    assert "adam_beta2" not in identity and "warmup_ratio" not in identity and "ce_target" not in identity["loss"]
    assert settings_identity(TrainConfig(adam_beta2=0.999))["adam_beta2"] == 0.999


def test_an_unknown_preset_is_refused_with_the_choices(capsys):
    code, _, err = run_cli(["train", "--target", TINY, "--preset", "paper"], capsys)
    assert code == 2 and "'cpu', 'reference'" in err


def test_train_with_the_reference_preset_on_the_command_line(capsys, tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Say thing {i}."}) + "\n" for i in range(4)))
    for args in (["data", "prompts", "--source", str(source), "--dataset", "preset-cli",
                  "--validation-fraction", "0.25"],
                 ["data", "regenerate", "--target", TINY, "--dataset", "preset-cli", "--max-new-tokens", "8"],
                 ["data", "cache", "--target", TINY, "--dataset", "preset-cli", "--layer-ids", "0,1",
                  "--dtype", "float32"]):
        code, _, err = run_cli(args, capsys)
        assert code == 0, (args, err)
    code, _, err = run_cli(["train", "--target", TINY, "--dataset", "preset-cli", "--preset", "reference",
                            "--steps", "2", "--num-layers", "2", "--draft-layers", "0,1", "--max-length", "64",
                            "--alpha-tv", "0.5", "--draft-vocab", "256", "--anchors", "16",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "draft" / "config.json").read_text())
    training, module = saved["training"], saved["module"]
    assert module["num_layers"] == 2 and training["num_layers"] == 2  # given: over the preset's 5
    assert module["block_size"] == 7 and training["max_length"] == 64 and training["anchors_per_sequence"] == 16
    assert training["adam_beta2"] == 0.999 and training["weight_decay"] == 0.0 and training["warmup_steps"] == 0
    assert training["loss"] == {"ce": 0.1, "tv": 0.5, "conf": 1.0, "decay": 4.0, "feature": 0.0, "ce_target": "token"}
    assert module["target_layer_ids"] == [0, 1]


@pytest.mark.parametrize("algorithm", ["dspark", "dflash", "eagle3"])
def test_the_ladder_climbs_from_the_cpu_preset_to_the_reference_one_difference_at_a_time(algorithm):
    from dspark_core.training.presets import ladder

    rungs = ladder(algorithm, 30, 49152, {"steps": 100})
    configs = [preset_config("cpu", _Target(), **settings) for _, settings in rungs]
    assert rungs[0][0] == "cpu" and configs[0] == TrainConfig(algorithm=algorithm, steps=100)
    assert configs[-1] == preset_config("reference", _Target(), algorithm=algorithm, steps=100)
    assert all(a != b for a, b in zip(configs, configs[1:]))  # every rung changes something
    names = [name for name, _ in rungs]
    assert ("soft-ce" in names) == (algorithm == "eagle3") and ("depth-5" in names) == (algorithm != "eagle3")


def test_the_ladder_benchmark_runs_each_difference_once(tiny_target, greedy_cache):  # noqa: F811
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import ladder_recipe

    runs = ladder_recipe.runs_to_make(tiny_target, greedy_cache, ["dspark", "eagle3"],
                                      {"steps": 2, "layer_ids": tuple(greedy_cache.layer_ids)}, [1, 2])
    names = [(r["drafter"], r["rung"]) for r in runs]
    # given layers make the target-layers rung a repeat
    assert ("dspark", "target-layers") not in names and ("eagle3", "target-layers") not in names
    assert ("eagle3", "anchors") in names
    assert names[0] == ("dspark", "cpu") and ("dspark", "depth-5") in names and ("eagle3", "soft-ce") in names
    assert names[-2:] == [("dspark", "reference-depth-1"), ("dspark", "reference-depth-2")]
    assert runs[-1]["settings"]["num_layers"] == 2 and runs[-1]["settings"]["block_size"] == 7


def test_the_ladder_compares_dspark_depths_with_eagle3_at_equal_draft_cost(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import ladder_recipe

    def run(drafter, rung, tau, draft_ms, depth=1, **extra):
        decoded = {"tau": tau + 0.1, "draft_ms_per_round": draft_ms}
        return {"drafter": drafter, "rung": rung, "settings": {"num_layers": depth}, "steps": 10, "train_minutes": 0.5,
                "val_tau": tau, "val_accept": [0.5, None], "greedy": decoded, "sampled": decoded, **extra}

    results = [run("eagle3", "soft-ce", 1.5, 20.0), run("dspark", "reference-depth-1", 1.3, 10.0),
               run("dspark", "reference-depth-4", 1.6, 40.0, depth=4), run("dspark", "cpu", 1.2, 5.0),
               # timed again on a quiet machine: that timing wins over the one taken while decoding
               run("dflash", "depth-5", 1.4, 99.0, depth=5, quiet_draft_ms_per_round=30.0)]
    rows = ladder_recipe.equal_draft_cost(results)
    assert [(r["drafter"], r["depth"], r["cost_ratio"], r["val_tau"], r["eagle3_val_tau"]) for r in rows] == [
        ("dflash", 5, 1.5, 1.4, 1.5), ("dspark", 1, 0.5, 1.3, 1.5), ("dspark", 4, 2.0, 1.6, 1.5)]
    ladder_recipe.print_table(results)
    assert "reference-depth-4" in capsys.readouterr().out


def test_the_ladder_finds_each_results_entrys_draft_again(tmp_path, monkeypatch):
    """`--draft-cost` re-times the drafts a results file describes: by the path an entry records, else (files
    written before entries recorded it) by the run directory of that drafter and rung whose saved training settings
    and cache are the entry's, whatever that directory's key; none: a message naming the home to run it in."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import ladder_recipe

    monkeypatch.setenv("DSPARK_HOME", str(tmp_path))
    cache = str(tmp_path / "cache")
    entry = {"drafter": "dspark", "rung": "cpu", "settings": {"algorithm": "dspark", "steps": 300}}

    def trained(key: str, older: bool = False, **settings) -> Path:
        draft = tmp_path / "ladder" / f"dspark-cpu-{key}" / "draft"
        draft.mkdir(parents=True)
        config = ladder_recipe.config_of({**entry["settings"], **settings}).to_dict()
        if older:  # saved before the trainer had these settings
            for name in ("autocast", "warm_start", "compile"):
                del config[name]
        (draft / "config.json").write_text(json.dumps({"training": {**config, "cache": cache}}))
        return draft

    trained("0-other-steps", steps=200)
    with pytest.raises(SystemExit, match="no draft of dspark at rung cpu.*DSPARK_HOME"):
        ladder_recipe.checkpoint_of(entry, cache)
    match = trained("1-its-settings-saved-long-ago", older=True)
    assert ladder_recipe.checkpoint_of(entry, cache) == match
    recorded = trained("2-recorded", steps=200)
    assert ladder_recipe.checkpoint_of({**entry, "draft": str(recorded)}, cache) == recorded


def test_the_ladder_times_its_drafts_again_on_a_quiet_machine(tiny_target, greedy_cache, tmp_path,  # noqa: F811
                                                               monkeypatch, capsys):
    """`--draft-cost FILE`: every draft the file lists decodes the same prompts again; the median draft ms per round
    is written beside its entry, with the command, and the file stays a results file. `--decode-again FILE`: every
    draft decodes held-out prompts greedily (identical to the target's own output) and at temperature 1."""
    import json
    import sys
    from pathlib import Path

    from dspark_core.training.trainer import train_draft

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import ladder_recipe

    monkeypatch.setenv("DSPARK_HOME", str(tmp_path))
    config = TrainConfig(algorithm="dspark", steps=2, draft_vocab_size=256, head_rank=16, anchors_per_sequence=4)
    draft = train_draft(tiny_target, greedy_cache, tmp_path / "run", config, progress=False).checkpoint
    results = tmp_path / "ladder.json"
    entry = {"drafter": "dspark", "rung": "cpu", "settings": {"algorithm": "dspark"}, "draft": str(draft),
             "steps": 2, "train_minutes": 0.1, "val_tau": 1.0, "val_accept": [0.0] * 4}
    results.write_text(json.dumps({"cache": str(greedy_cache.path), "results": [entry]}))
    assert ladder_recipe.main(["--draft-cost", str(results), "--target", TINY, "--repeats", "1"]) == 0
    saved = json.loads(results.read_text())
    assert saved["results"][0]["quiet_draft_ms_per_round"] > 0 and len(saved["results"][0]["quiet_draft_ms_runs"]) == 1
    assert saved["draft_cost_command"].startswith("python benchmarks/ladder_recipe.py") and saved["equal_draft_cost"] == []

    with pytest.raises(SystemExit):  # how many prompts is not guessed
        ladder_recipe.main(["--decode-again", str(results), "--target", TINY])
    assert "--decode-again needs --decode N" in capsys.readouterr().err
    assert ladder_recipe.main(["--decode-again", str(results), "--decode", "1", "--target", TINY]) == 0
    decoded = json.loads(results.read_text())
    again = decoded["results"][0]
    assert decoded["decoded_prompts"] == 3 and again["greedy"]["lossless"] is True
    assert again["greedy"]["tau"] >= 1.0 and again["sampled"]["tau"] >= 1.0
    assert again["quiet_draft_ms_per_round"] == saved["results"][0]["quiet_draft_ms_per_round"]  # the rest is kept
