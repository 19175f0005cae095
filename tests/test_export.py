"""Export to the Hugging Face-style and speculators layouts; loading either back is bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from dspark_core.drafters.checkpoint import load_draft, save_draft
from dspark_core.errors import DsparkError
from dspark_core.export import export_draft
from test_drafters import LEARNED_MASK, _eagle3, _features, _model


def _logits(model, target):
    ids = torch.tensor([[5, 17, 42, 8, 33, 21, 9, 140, 3, 11]])  # 140: outside the test drafts' vocabulary
    return model.forward_train(_features(target, ids), ids, torch.tensor([10]), torch.tensor([[2, 5]]))


KINDS = ["dspark-markov", "dspark-rnn", "dspark-gated", "dflash", "eagle3"]


@pytest.mark.parametrize("kind, fmt", [(k, f) for k in KINDS for f in ("hf", "speculators")]
                         + [("dspark-learned", "hf"), ("dflash-anchor", "hf"), ("dspark-fill-in", "speculators")])
def test_export_round_trip_is_bit_identical(tiny_target, tmp_path, kind, fmt):
    if kind == "eagle3":
        model = _eagle3(tiny_target)
    elif kind == "dflash":  # the anchor slot drafts nothing: vLLM's dflash layout, the DFlash default
        model = _model(tiny_target, algorithm="dflash", sample_from_anchor=False)
    elif kind == "dflash-anchor":  # the anchor slot drafts (hf format only: vLLM's dflash would misread it)
        model = _model(tiny_target, algorithm="dflash")
    elif kind == "dspark-fill-in":
        model = _model(tiny_target, sample_from_anchor=False)
    elif kind == "dspark-learned":  # the mask vector and layer of drafts trained before (hf format only)
        model = _model(tiny_target, **LEARNED_MASK)
    else:
        model = _model(tiny_target, head=kind.split("-")[1])
    save_draft(model, tmp_path / "draft", target=tiny_target)
    original, _ = load_draft(tmp_path / "draft", tiny_target)
    export_draft(tmp_path / "draft", tmp_path / "export", fmt)
    loaded, source = load_draft(tmp_path / "export", tiny_target)
    assert source["target_revision"] == tiny_target.revision
    for a, b in zip(_logits(original, tiny_target), _logits(loaded, tiny_target)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_speculators_layout_uses_their_field_names(tiny_target, tmp_path):
    save_draft(_model(tiny_target, head="markov"), tmp_path / "draft", target=tiny_target,
               training={"loss": {"ce": 0.1, "tv": 0.9, "conf": 1.0, "decay": 4.0}, "anchors_per_sequence": 16})
    export_draft(tmp_path / "draft", tmp_path / "spec", "speculators")
    config = json.loads((tmp_path / "spec" / "config.json").read_text())
    assert config["speculators_model_type"] == "dspark" and config["architectures"] == ["DSparkSpeculator"]
    assert config["aux_hidden_state_layer_ids"] == [1, 2]  # hidden_states indices of layers 0 and 1
    assert config["markov_rank"] == 16 and config["markov_head_type"] == "vanilla"
    assert config["enable_confidence_head"] is True and config["block_size"] == 4
    assert config["l1_loss_alpha"] == 0.9 and config["loss_decay_gamma"] == 4.0
    assert config["transformer_layer_config"]["num_hidden_layers"] == 2
    proposal = config["speculators_config"]["proposal_methods"][0]
    assert proposal == {"proposal_type": "greedy", "speculative_tokens": 4}
    assert config["speculators_config"]["verifier"]["architectures"] == ["LlamaForCausalLM"]
    assert config["mask_token_id"] == 1 and config["sample_from_anchor"] is True
    assert config["transformer_layer_config"]["model_type"] == "qwen3"
    # vLLM's draft layers read the context length, with no default
    assert config["transformer_layer_config"]["max_position_embeddings"] == tiny_target.max_context
    # the verifier is the snapshot directory the draft was trained against, which a loader can open
    verifier = config["speculators_config"]["verifier"]["name_or_path"]
    assert (Path(verifier) / "config.json").is_file() and Path(verifier) == tiny_target.snapshot.path.resolve()
    assert config["dspark_verifier"]["content_sha256"] == tiny_target.revision
    tensors = load_file(str(tmp_path / "spec" / "model.safetensors"))
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.weight",
            "layers.0.self_attn.q_norm.weight", "layers.1.self_attn.k_norm.weight",
            "layers.1.mlp.down_proj.weight", "markov_head.markov_w1.weight", "markov_head.markov_w2.weight",
            "confidence_head.proj.weight", "d2t", "t2d", "lm_head.weight"} <= set(tensors)
    assert "mask_embedding" not in tensors
    # the reduced-vocabulary LM head: the target's rows of the draft tokens, in d2t order
    vocab = tensors["d2t"] + torch.arange(tensors["d2t"].numel())
    assert torch.equal(tensors["lm_head.weight"], tiny_target.model.get_output_embeddings().weight[vocab])


def test_speculators_fields_vllm_reads(tiny_target, tmp_path):
    """What vLLM takes from an export beyond the speculators package: DFlash's slot layout, Eagle3's count of fused
    target layers (vLLM assumes 3 without it)."""
    save_draft(_model(tiny_target, algorithm="dflash", sample_from_anchor=False), tmp_path / "dflash", target=tiny_target)
    export_draft(tmp_path / "dflash", tmp_path / "dflash-spec", "speculators")
    config = json.loads((tmp_path / "dflash-spec" / "config.json").read_text())
    # speculators counts the block's slots (the anchor and 4 mask slots), vLLM the drafts
    assert config["sample_from_anchor"] is False and config["block_size"] == 5
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 4
    eagle3 = _eagle3(tiny_target)
    save_draft(eagle3, tmp_path / "eagle3", target=tiny_target)
    export_draft(tmp_path / "eagle3", tmp_path / "eagle3-spec", "speculators")
    config = json.loads((tmp_path / "eagle3-spec" / "config.json").read_text())
    layer = config["transformer_layer_config"]
    assert layer["num_aux_hidden_states"] == len(eagle3.config.target_layer_ids) == len(config["eagle_aux_hidden_state_layer_ids"])
    assert layer["max_position_embeddings"] == tiny_target.max_context


@pytest.mark.parametrize("head, names", [("gated", {"markov_head.gate_proj.weight", "markov_head.gate_proj.bias"}),
                                          ("rnn", {"markov_head.joint_proj.weight", "markov_head.joint_proj.bias"})])
def test_gated_and_rnn_heads_carry_speculators_names(tiny_target, tmp_path, head, names):
    """The round trip maps names both ways, so it cannot see a wrong name; these are speculators 0.9's."""
    save_draft(_model(tiny_target, head=head), tmp_path / "draft", target=tiny_target)
    export_draft(tmp_path / "draft", tmp_path / "spec", "speculators")
    stored = set(load_file(str(tmp_path / "spec" / "model.safetensors")))
    assert names <= stored and not {n for n in stored if n.startswith("head.")}


def test_a_vocabulary_mask_token_is_the_targets_own_and_eagle3_needs_none(tiny_target):
    from dspark_core.drafters.registry import drafter_kind

    config = drafter_kind("dflash").module_config(tiny_target, mask_token="vocab", draft_vocab_size=64)
    assert config.mask_token_id == tiny_target.tokenizer.unk_token_id  # <|endoftext|>: the tokenizer has no mask token
    eagle3 = drafter_kind("eagle3").module_config(tiny_target, mask_token="vocab", draft_vocab_size=64)
    assert not hasattr(eagle3, "mask_token_id")


def test_speculators_export_refuses_what_it_cannot_express(tiny_target, tmp_path):
    save_draft(_model(tiny_target, **LEARNED_MASK), tmp_path / "draft", target=tiny_target)
    with pytest.raises(DsparkError, match="cannot be exported to the speculators format exactly.*--qk-norm.*"
                                          "--mask-token vocab.*--format hf"):
        export_draft(tmp_path / "draft", tmp_path / "spec", "speculators")
    assert not (tmp_path / "spec").exists()
    export_draft(tmp_path / "draft", tmp_path / "hf", "hf")  # our own layout takes any variant
    save_draft(_model(tiny_target, algorithm="dflash"), tmp_path / "anchor", target=tiny_target)
    with pytest.raises(DsparkError, match="vLLM's dflash drafts from the mask slots only.*--no-sample-from-anchor"):
        export_draft(tmp_path / "anchor", tmp_path / "spec", "speculators")
    save_draft(_model(tiny_target, anchor_state=True), tmp_path / "direct", target=tiny_target)
    with pytest.raises(DsparkError, match="read the target's last state directly.*--format hf"):
        export_draft(tmp_path / "direct", tmp_path / "spec", "speculators")
    export_draft(tmp_path / "direct", tmp_path / "hf-direct", "hf")
    assert load_draft(tmp_path / "hf-direct", tiny_target)[1]["module"]["anchor_state"] is True


def test_export_cli_and_bad_input(capsys, tiny_target, tmp_path):
    save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
    code, out, err = run_cli(["export", str(tmp_path / "draft"), "--format", "hf", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "config.json").is_file()
    code, out, err = run_cli(["export", str(tmp_path / "draft"), "--format", "hf"], capsys)
    assert code == 0, err
    assert "exports" in out  # the default place is under $DSPARK_HOME/exports
    (tmp_path / "notes").mkdir()
    code, _, err = run_cli(["export", str(tmp_path / "draft"), "--out", str(tmp_path / "notes")], capsys)
    assert code == 2 and "is not a dspark export" in err  # never replaces a directory that is not an export
    with pytest.raises(DsparkError, match="unknown export format 'onnx'"):
        export_draft(tmp_path / "draft", tmp_path / "x", "onnx")
    with pytest.raises(DsparkError, match="not a draft checkpoint"):
        export_draft(tmp_path, tmp_path / "y", "hf")
