"""DSpark / DFlash modules: attention structure, the Markov head's dependence, the losses, lossless use."""

from __future__ import annotations

import json

import pytest
import torch

from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.drafters.checkpoint import attach_target_weights, load_draft, save_draft
from dspark_core.drafters.dspark import DSparkModel, DraftLayer, block_attention_mask
from dspark_core.drafters.registry import drafter_kind
from dspark_core.drafters.runtime import DSparkDrafter
from dspark_core.training.losses import LossWeights, draft_losses


#: the layer and mask slots the speculators format expresses, which training uses by default
EXACT = {"qk_norm": True, "mask_token": "vocab", "mask_token_id": 1}
#: what drafts had before (and `--no-qk-norm --mask-token learned` still trains)
LEARNED_MASK = {"qk_norm": False, "mask_token": "learned", "mask_token_id": None}


def _model(target, algorithm="dspark", head="markov", vocab=None, **overrides) -> DSparkModel:
    config = drafter_kind(algorithm).module_config(
        target, num_layers=2, block_size=4, target_layer_ids=(0, 1), head_rank=16,
        draft_vocab_size=len(vocab) if vocab is not None else 64, head=head, **{**EXACT, **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DSparkModel(config).to(target.dtype)
        if model.head is not None:
            torch.nn.init.normal_(model.head.out.weight, std=0.5)  # a non-trivial head for the tests
        if model.anchor_state is not None:
            torch.nn.init.normal_(model.anchor_state.weight, std=0.5)  # zero at initialization: make it matter
    model.set_draft_vocab(torch.tensor(vocab if vocab is not None else list(range(64)), dtype=torch.long))
    attach_target_weights(model, target)
    return model.eval()


def test_block_mask_never_sees_later_context_or_other_blocks():
    anchors = torch.tensor([[2, 5]])
    mask = block_attention_mask(anchors, torch.tensor([7]), context_length=8, gamma=3)
    assert mask.shape == (1, 6, 8 + 6)
    ctx, blocks = mask[0, :, :8], mask[0, :, 8:]
    assert ctx[:3].tolist() == [[True, True] + [False] * 6] * 3  # anchor 2: positions 0, 1 only
    assert ctx[3:].tolist() == [[True] * 5 + [False] * 3] * 3  # anchor 5: 0..4, and never past the length
    assert blocks[:3, :3].all() and blocks[3:, 3:].all()  # bidirectional inside a block
    assert not blocks[:3, 3:].any() and not blocks[3:, :3].any()  # never another block


def _features(target, ids):
    out = target.forward_features(ids, layer_ids=(0, 1), with_logits=False)
    return torch.cat(out.layers, -1)


def test_block_output_depends_only_on_earlier_context(tiny_target):
    model = _model(tiny_target)
    ids = torch.tensor([tiny_target.encode_prompt("one two three four five six seven eight nine")])
    features = _features(tiny_target, ids)
    lengths = torch.tensor([ids.shape[1]])
    anchors = torch.tensor([[2, 7]])  # γ = 4: block 0 reads tokens 2..5, block 1 starts at 7
    base, _ = model.forward_train(features, ids, lengths, anchors)
    changed = features.clone()
    changed[:, 2:] += 1.0  # context at or after the first anchor
    after, _ = model.forward_train(changed, ids, lengths, anchors)
    assert torch.equal(base[:, 0], after[:, 0])  # block at anchor 2 never saw positions >= 2
    assert not torch.allclose(base[:, 1], after[:, 1])  # block at anchor 7 did see 2..6
    other = ids.clone()
    other[0, 7] = (other[0, 7] + 1) % 1000  # the second block's anchor token
    swapped, _ = model.forward_train(features, other, lengths, anchors)
    assert torch.equal(base[:, 0], swapped[:, 0])  # blocks never see each other


def test_anchor_state_input_reads_the_state_before_the_anchor_and_nothing_later(tiny_target):
    model = _model(tiny_target, anchor_state=True)
    ids = torch.tensor([tiny_target.encode_prompt("one two three four five six seven eight nine")])
    features = _features(tiny_target, ids)
    lengths, anchors = torch.tensor([ids.shape[1]]), torch.tensor([[3, 7]])
    base, _ = model.forward_train(features, ids, lengths, anchors)
    changed = features.clone()
    changed[:, 3:] += 1.0  # at or after the first anchor
    assert torch.equal(base[:, 0], model.forward_train(changed, ids, lengths, anchors)[0][:, 0])
    with torch.no_grad():
        model.anchor_state.weight.zero_()  # the same module without the direct input
    assert not torch.allclose(base, model.forward_train(features, ids, lengths, anchors)[0])


def test_anchor_state_draft_is_lossless_and_reloads_identically(tiny_target, tmp_path):
    model = _model(tiny_target, anchor_state=True)
    save_draft(model, tmp_path / "draft", target=tiny_target)
    reloaded, config = load_draft(tmp_path / "draft", tiny_target)
    assert config["module"]["anchor_state"] is True and torch.equal(reloaded.anchor_state.weight, model.anchor_state.weight)
    prompts = [tiny_target.encode_prompt(p) for p in ["a drafter test", "second request here, longer", "x"]]
    reference = SpeculativeEngine(tiny_target).generate(prompts, GenerationConfig(max_new_tokens=24, stop_at_eos=False))
    result = SpeculativeEngine(tiny_target, DSparkDrafter(reloaded)).generate(
        prompts, GenerationConfig(max_new_tokens=24, stop_at_eos=False, block_size=4))
    assert [o.tokens for o in result.outputs] == [o.tokens for o in reference.outputs]


def test_in_block_attention_is_bidirectional(tiny_target):
    model = _model(tiny_target)
    layer: DraftLayer = model.layers[0]
    torch.manual_seed(1)
    block = torch.randn(1, 4, model.config.hidden_size, dtype=tiny_target.dtype)
    positions = torch.arange(10, 14)[None]
    empty = block.new_zeros(1, model.config.num_kv_heads, 0, model.config.head_dim)
    out = layer(block, positions, (empty, empty), None)
    later = block.clone()
    later[:, 3] += 1.0
    assert not torch.allclose(layer(later, positions, (empty, empty), None)[:, 0], out[:, 0])


def test_markov_head_changes_position_k_only_through_token_k_minus_1(tiny_target):
    model = _model(tiny_target)
    ids = torch.tensor([tiny_target.encode_prompt("alpha beta gamma delta epsilon zeta eta theta")])
    features = _features(tiny_target, ids)
    lengths, anchors = torch.tensor([ids.shape[1]]), torch.tensor([[2]])
    base, _ = model.forward_train(features, ids, lengths, anchors)
    for k in (2, 3):  # block positions (1-based); their previous token sits at anchor + k - 1
        changed = ids.clone()
        changed[0, 2 + k - 1] = (changed[0, 2 + k - 1] + 7) % 60
        logits, _ = model.forward_train(features, changed, lengths, anchors)
        differs = [not torch.allclose(base[0, 0, j], logits[0, 0, j]) for j in range(4)]
        assert differs == [j == k - 1 for j in range(4)]


def test_head_rows_map_draft_tokens_to_their_rows_and_others_to_one_shared_row(tiny_target):
    model = _model(tiny_target, vocab=[3, 10, 20, 400])
    assert model.head.embed.num_embeddings == 5
    assert model.head_rows(torch.tensor([[3, 400, 0, 11, 20, 49151]])).tolist() == [[0, 3, 4, 4, 2, 4]]
    assert _model(tiny_target, head_vocab="full").head.embed.num_embeddings == tiny_target.vocab_size


def test_draft_vocabulary_head_equals_a_full_head_whose_outside_rows_are_shared(tiny_target, tmp_path):
    """head_vocab 'draft' is the 'full' head with every token outside the draft vocabulary on one row."""
    vocab = list(range(0, 128, 2))
    full, compact = _model(tiny_target, vocab=vocab, head_vocab="full"), _model(tiny_target, vocab=vocab)
    state = full.state_dict()
    w1 = state["head.embed.weight"]
    outside = torch.ones(w1.shape[0], dtype=torch.bool)
    outside[vocab] = False
    w1[outside] = w1[1].clone()  # token 1 is outside: its row stands for all of them
    full.load_state_dict(state)
    state["head.embed.weight"] = torch.cat([w1[vocab], w1[1:2]])
    compact.load_state_dict(state)
    ids = torch.tensor([[5, 17, 42, 8, 33, 21, 9, 140, 3, 11, 4, 6]])
    features, lengths, anchors = _features(tiny_target, ids), torch.tensor([12]), torch.tensor([[1, 4, 6]])
    for a, b in zip(full.forward_train(features, ids, lengths, anchors), compact.forward_train(features, ids, lengths, anchors)):
        assert torch.allclose(a, b)
    # a draft saved before the setting existed holds a full head, and loads as one
    save_draft(full, tmp_path / "old", target=tiny_target)
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    del config["module"]["head_vocab"]
    config_file.write_text(json.dumps(config))
    loaded, _ = load_draft(tmp_path / "old", tiny_target)
    assert loaded.config.head_vocab == "full" and torch.equal(loaded.head.embed.weight, full.head.embed.weight)


def test_without_sampling_from_the_anchor_the_block_has_one_more_slot_and_the_anchor_slot_drafts_nothing(tiny_target,
                                                                                                   tmp_path):
    """vLLM's dflash layout: [anchor, mask x γ] at positions a..a+γ, mask slot k predicts the token at a + k. The
    anchor slot's own output is dropped, yet it is attended to: changing the anchor changes every draft."""
    model = _model(tiny_target, algorithm="dflash", sample_from_anchor=False)
    assert model.config.slots == model.config.block_size + 1 == 5
    assert model.block_inputs(torch.tensor([[3]])).shape[-2] == 5
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    logits, _ = model.forward_train(_features(tiny_target, ids), ids, torch.tensor([8]), torch.tensor([[2]]))
    assert logits.shape[2] == model.config.block_size  # γ drafts, not γ + 1
    other = ids.clone()
    other[0, 2] = 40  # another anchor token
    changed, _ = model.forward_train(_features(tiny_target, ids), other, torch.tensor([8]), torch.tensor([[2]]))
    assert not torch.allclose(logits, changed)
    save_draft(model, tmp_path / "draft", target=tiny_target)
    reloaded, config = load_draft(tmp_path / "draft", tiny_target)
    assert config["module"]["sample_from_anchor"] is False and reloaded.config.slots == 5
    again, _ = reloaded.forward_train(_features(tiny_target, ids), ids, torch.tensor([8]), torch.tensor([[2]]))
    assert torch.equal(again, logits)


def test_dflash_has_no_sequential_dependence(tiny_target):
    model = _model(tiny_target, algorithm="dflash")
    ids = torch.tensor([tiny_target.encode_prompt("alpha beta gamma delta epsilon zeta eta theta")])
    features = _features(tiny_target, ids)
    lengths, anchors = torch.tensor([ids.shape[1]]), torch.tensor([[2]])
    base, confidence = model.forward_train(features, ids, lengths, anchors)
    changed = ids.clone()
    changed[0, 3] += 1
    assert confidence is None and torch.allclose(base, model.forward_train(features, changed, lengths, anchors)[0])


def test_losses_match_hand_computation():
    # Target vocabulary of 3 tokens, draft vocabulary {0, 2}; one supervised position, k = 0.
    draft_logits = torch.log(torch.tensor([[0.75, 0.25]]))
    target_logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    terms = draft_losses(draft_logits, target_logits, torch.tensor([2]), torch.tensor([0]), torch.tensor([0, 2]),
                         gamma=2, weights=LossWeights(ce=0.1, tv=0.9, conf=1.0), confidence_logits=torch.tensor([0.0]))
    l1 = abs(0.75 - 0.5) + abs(0.25 - 0.2) + 0.3  # plus the target mass outside the draft vocabulary
    assert terms.tv == pytest.approx(l1)
    assert terms.ce == pytest.approx(-torch.log(torch.tensor(0.25)).item())
    accept = 1 - l1 / 2
    bce = -(accept * torch.log(torch.tensor(0.5)) + (1 - accept) * torch.log(torch.tensor(0.5))).item()
    assert terms.conf == pytest.approx(bce)
    assert terms.total == pytest.approx(0.1 * terms.ce + 0.9 * l1 + bce)
    assert terms.acceptance[0] == pytest.approx(accept) and terms.counts.tolist() == [1, 0]
    assert terms.expected_tau() == pytest.approx(1 + accept)


def test_feature_loss_is_the_decayed_smooth_l1_to_the_target_state_and_trains_only_the_draft():
    draft_logits, target_logits = torch.zeros(2, 2), torch.zeros(2, 3)
    target_hidden = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    draft_hidden = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)  # position 1 is off by 3 in one dim
    weights = LossWeights(ce=0.0, tv=0.0, conf=0.0, feature=1.0, decay=1.0)
    terms = draft_losses(draft_logits, target_logits, torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, 2]),
                         gamma=2, weights=weights, draft_hidden=draft_hidden, target_hidden=target_hidden)
    w = torch.exp(-torch.tensor([0.0, 1.0]))
    smooth_l1 = torch.tensor([0.0, (3.0 - 0.5) / 2])  # |x| - 0.5 beyond 1, averaged over the 2 dimensions
    assert terms.feature == pytest.approx(((smooth_l1 * w).sum() / w.sum()).item())
    terms.total.backward()
    assert draft_hidden.grad[0].abs().sum() == 0 and draft_hidden.grad[1, 1] > 0
    same = draft_losses(draft_logits, target_logits, torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, 2]),
                        gamma=2, weights=weights, draft_hidden=target_hidden, target_hidden=target_hidden)
    assert same.feature == 0


def test_position_decay_weights_later_positions_less():
    logits = torch.zeros(2, 2)
    target = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    near = draft_losses(logits, target, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([0, 1]), 3, LossWeights())
    mixed = draft_losses(torch.stack([logits[0], torch.tensor([5.0, 0.0])]), target, torch.tensor([0, 0]),
                         torch.tensor([0, 2]), torch.tensor([0, 1]), 3, LossWeights(decay=1.0))
    w0, w2 = 1.0, float(torch.exp(torch.tensor(-2.0)))
    l1_uniform, l1_peaked = 0.8, abs(torch.softmax(torch.tensor([5.0, 0.0]), 0) - torch.tensor([0.9, 0.1])).sum().item()
    assert near.tv == pytest.approx(0.8)
    assert mixed.tv == pytest.approx((w0 * l1_uniform + w2 * l1_peaked) / (w0 + w2))


@pytest.mark.parametrize("head", ["markov", "gated", "rnn"])
def test_untrained_drafter_is_lossless_greedy(tiny_target, head, tmp_path):
    model = _model(tiny_target, head=head)
    save_draft(model, tmp_path / "draft", target=tiny_target)
    reloaded, config = load_draft(tmp_path / "draft", tiny_target)
    assert config["head"] == head and config["target_revision"] == tiny_target.revision
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    features = _features(tiny_target, ids)
    before = model.forward_train(features, ids, torch.tensor([5]), torch.tensor([[1]]))
    after = reloaded.forward_train(features, ids, torch.tensor([5]), torch.tensor([[1]]))
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a reloaded checkpoint gives bit-identical logits"
    prompts = [tiny_target.encode_prompt(p) for p in ["a drafter test", "second request here, longer"]]
    reference = SpeculativeEngine(tiny_target).generate(prompts, GenerationConfig(max_new_tokens=24, stop_at_eos=False))
    result = SpeculativeEngine(tiny_target, DSparkDrafter(reloaded)).generate(
        prompts, GenerationConfig(max_new_tokens=24, stop_at_eos=False, block_size=4))
    assert [o.tokens for o in result.outputs] == [o.tokens for o in reference.outputs]


def test_checkpoint_for_another_target_is_refused(tiny_target, perturbed_tiny, tmp_path):
    from dspark_core.errors import DsparkError

    save_draft(_model(tiny_target), tmp_path / "draft", target=tiny_target)
    perturbed_tiny.snapshot = None
    with pytest.raises(DsparkError, match="was trained for 'tiny:smollm2-135m'"):
        load_draft(tmp_path / "draft", perturbed_tiny)


def _eagle3(target):
    from dspark_core.drafters.eagle3 import Eagle3Model

    config = drafter_kind("eagle3").module_config(target, block_size=4, target_layer_ids=(0, 1), draft_vocab_size=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Eagle3Model(config).to(target.dtype)
    model.set_draft_vocab(torch.arange(64))
    attach_target_weights(model, target)
    return model.eval()


def test_eagle3_is_causal_in_context_and_within_the_chain(tiny_target):
    model = _eagle3(tiny_target)
    ids = torch.tensor([tiny_target.encode_prompt("one two three four five six seven eight nine ten")])
    features = _features(tiny_target, ids)
    lengths, anchors = torch.tensor([ids.shape[1]]), torch.tensor([[3]])
    base, confidence = model.forward_train(features, ids, lengths, anchors)
    assert confidence is None and base.shape == (1, 1, 4, 64)
    changed = features.clone()
    changed[:, 3:] += 1.0  # target features at or after the anchor: never available when drafting from it
    assert torch.equal(base, model.forward_train(changed, ids, lengths, anchors)[0])
    later = ids.clone()
    later[0, 3 + 2] += 1  # token x_{a+2}: fed at step 2 (0-based), so steps 0 and 1 must not see it
    logits = model.forward_train(features, later, lengths, anchors)[0]
    assert [torch.equal(base[0, 0, s], logits[0, 0, s]) for s in range(4)] == [True, True, False, False]


def test_untrained_eagle3_is_lossless_and_reloads_identically(tiny_target, tmp_path):
    from dspark_core.drafters.checkpoint import load_drafter

    save_draft(_eagle3(tiny_target), tmp_path / "e3", target=tiny_target)
    drafter = load_drafter(tmp_path / "e3", tiny_target)
    assert drafter.feature_layers == (0, 1)
    prompts = [tiny_target.encode_prompt(p) for p in ["an eagle test", "x"]]
    reference = SpeculativeEngine(tiny_target).generate(prompts, GenerationConfig(max_new_tokens=20, stop_at_eos=False))
    result = SpeculativeEngine(tiny_target, drafter).generate(prompts, GenerationConfig(max_new_tokens=20, stop_at_eos=False, block_size=4))
    assert [o.tokens for o in result.outputs] == [o.tokens for o in reference.outputs]


def test_registry_knows_every_algorithm_and_refuses_others(tiny_target):
    from dspark_core.drafters.registry import ALGORITHMS, DRAFTERS
    from dspark_core.errors import ConfigError

    assert ALGORITHMS == ("dspark", "dflash", "eagle3")
    for name, kind in DRAFTERS.items():
        config = kind.module_config(tiny_target, block_size=3, target_layer_ids=(0, 1), draft_vocab_size=32)
        assert config.algorithm == name and config.block_size == 3
        drafter = kind.runtime(kind.build(config))
        assert drafter.block_size == 3 and drafter.feature_layers == (0, 1)
    assert DRAFTERS["dflash"].module_config(tiny_target, head="markov").head == "none"  # fixed by the algorithm
    from dspark_core.training.trainer import TrainConfig

    assert TrainConfig(algorithm="eagle3", anchor_state=True).anchor_state is False  # Eagle3's input has it already
    # left empty, each algorithm picks its block layout: DFlash the one vLLM's dflash serves
    assert TrainConfig(algorithm="dflash").sample_from_anchor is False
    assert TrainConfig(algorithm="dspark").sample_from_anchor is True
    assert TrainConfig(algorithm="dflash", sample_from_anchor=True).sample_from_anchor is True
    assert TrainConfig(algorithm="eagle3", sample_from_anchor=False).sample_from_anchor is True
    assert DRAFTERS["eagle3"].select_layers((1, 8, 14, 20, 27)) == (1, 14, 27)
    with pytest.raises(ConfigError, match="unknown drafter algorithm 'medusa'"):
        drafter_kind("medusa")


@pytest.mark.parametrize("algorithm", ["dspark", "dflash", "eagle3", "dspark-anchor-state", "dflash-fill-in",
                                       "dspark-fill-in"])
def test_training_forward_and_runtime_drafter_propose_the_same_block(tiny_target, algorithm):
    """The teacher-forced training forward, fed the runtime drafter's own proposals as the gold tokens, must
    rank them first at every slot: the cached features, anchors, labels and the runtime context line up
    position for position (an off-by-one anywhere breaks this)."""
    from dspark_core.decoding.drafter import DraftRequest
    from dspark_core.models.target import TargetFeatures

    if algorithm == "dspark-anchor-state":
        model, algorithm = _model(tiny_target, anchor_state=True), "dspark"
    elif algorithm.endswith("-fill-in"):  # the anchor slot drafts nothing (vLLM's dflash layout)
        algorithm = algorithm.removesuffix("-fill-in")
        model = _model(tiny_target, algorithm=algorithm, sample_from_anchor=False)
    else:
        model = _eagle3(tiny_target) if algorithm == "eagle3" else _model(tiny_target, algorithm=algorithm)
    ids = tiny_target.encode_prompt("the quick brown fox jumps over the lazy dog and runs far away")
    gamma = model.config.block_size
    for anchor in (1, 4, len(ids) - 1):
        with torch.no_grad():
            prefix = tiny_target.forward_features(torch.tensor([ids[:anchor]]), layer_ids=(0, 1), with_logits=False)
        drafter = drafter_kind(algorithm).runtime(model)
        drafter.begin([ids[: anchor + 1]])
        features = TargetFeatures(last_hidden=prefix.last_hidden[0], layer_ids=(0, 1), layers=tuple(x[0] for x in prefix.layers))
        proposal = drafter.propose(DraftRequest([0], [ids[: anchor + 1]], [gamma], [features],
                                                SamplingConfig(temperature=0.0), None)).tokens[0].tolist()
        forced = torch.tensor([ids[: anchor + 1] + proposal])
        logits, _ = model.forward_train(_features(tiny_target, forced), forced, torch.tensor([forced.shape[1]]),
                                        torch.tensor([[anchor]]))
        ranked = model.draft_vocab[logits[0, 0].argmax(-1)].tolist()
        assert ranked == proposal, (algorithm, anchor)


@pytest.mark.parametrize("variant", ["dspark", "dspark-rnn", "dspark-anchor-state", "dflash", "dflash-fill-in", "eagle3"])
def test_batched_drafting_proposes_what_one_request_at_a_time_does(tiny_target, variant):
    """Requests with contexts of different lengths (one with none yet) and different limits, drafted in one
    batched pass, get the blocks and confidences each gets drafted alone; greedy decoding with batched drafting
    equals autoregressive decoding at 1 to 8 concurrent requests."""
    from dspark_core.decoding.drafter import DraftRequest
    from dspark_core.models.target import TargetFeatures

    if variant == "eagle3":
        model, algorithm = _eagle3(tiny_target), "eagle3"
    else:
        algorithm = variant.split("-")[0]
        overrides = {"dspark-rnn": {"head": "rnn"}, "dspark-anchor-state": {"anchor_state": True},
                     "dflash-fill-in": {"sample_from_anchor": False}}.get(variant, {})
        model = _model(tiny_target, algorithm=algorithm, **overrides)
    texts = ["the quick brown fox jumps over the lazy dog", "a", "one two three four five six seven eight nine ten",
             "hello there", "numbers: 1 2 3 4 5 6 7"]
    histories = [tiny_target.encode_prompt(text) for text in texts]
    limits = [4, 4, 2, 3, 1]

    def features_of(ids):
        if len(ids) < 2:
            return None
        with torch.no_grad():
            out = tiny_target.forward_features(torch.tensor([ids[:-1]]), layer_ids=(0, 1), with_logits=False)
        return TargetFeatures(last_hidden=out.last_hidden[0], layer_ids=(0, 1), layers=tuple(x[0] for x in out.layers))

    def propose(rows):
        drafter = drafter_kind(algorithm).runtime(model)
        drafter.begin(histories)
        request = DraftRequest(rows, [histories[r] for r in rows], [limits[r] for r in rows],
                               [features_of(histories[r]) for r in rows], SamplingConfig(temperature=0.0), None)
        return drafter.propose(request)

    together = propose(list(range(len(texts))))
    for row in range(len(texts)):
        alone = propose([row])
        width = int(alone.lengths[0])
        assert int(together.lengths[row]) == width
        assert together.tokens[row, :width].tolist() == alone.tokens[0, :width].tolist(), (variant, row)
        if alone.confidences is not None:
            torch.testing.assert_close(together.confidences[row, :width], alone.confidences[0, :width],
                                       rtol=1e-4, atol=1e-5)
    reference = SpeculativeEngine(tiny_target).generate(histories, GenerationConfig(max_new_tokens=12, stop_at_eos=False))
    for concurrent in (2, 8):
        result = SpeculativeEngine(tiny_target, drafter_kind(algorithm).runtime(model)).generate(
            histories, GenerationConfig(max_new_tokens=12, stop_at_eos=False, block_size=4, max_batch=concurrent))
        assert [o.tokens for o in result.outputs] == [o.tokens for o in reference.outputs], (variant, concurrent)
