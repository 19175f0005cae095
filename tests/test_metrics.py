"""The metric definitions on hand-made verification traces."""

from dspark_core.decoding.metrics import RoundRecord, conditional_acceptance, prefix_acceptance, summarize, tau


def _trace():
    # proposed, accepted, emitted
    return [
        RoundRecord(3, 3, 4),  # all accepted + bonus
        RoundRecord(3, 1, 2),  # rejected at position 2
        RoundRecord(3, 0, 1),  # rejected at position 1
        RoundRecord(2, 2, 3),  # shorter proposal, all accepted
        RoundRecord(2, 2, 2),  # EOS accepted at position 2: accepted tokens only, no bonus
    ]


def test_tau_counts_bonus_but_not_after_eos():
    assert tau(_trace()) == (4 + 2 + 1 + 3 + 2) / 5


def test_prefix_acceptance():
    # k=1: 5 rounds proposed >=1; accepted >=1: rounds 1,2,4,5 -> 4/5
    # k=2: 5 proposed >=2; accepted >=2: rounds 1,4,5 -> 3/5
    # k=3: rounds 1,2,3 proposed >=3; accepted >=3: round 1 -> 1/3
    assert prefix_acceptance(_trace(), 4) == [4 / 5, 3 / 5, 1 / 3, None]


def test_conditional_acceptance():
    # k=1: all 5 eligible (accepted >= 0), 4 accepted -> 4/5
    # k=2: proposed >=2 and accepted >=1: rounds 1,2,4,5 -> accepted >=2: 1,4,5 -> 3/4
    # k=3: proposed >=3 and accepted >=2: round 1 -> 1/1
    assert conditional_acceptance(_trace(), 3) == [4 / 5, 3 / 4, 1.0]


def test_summary_of_autoregressive_trace():
    records = [RoundRecord(0, 0, 1)] * 10
    stats = summarize(records, requests=1, batch_rounds=10, wall_s=2.0, prefill_s=0.1, draft_s=0.0, verify_s=1.5)
    assert stats.tau == 1.0
    assert stats.new_tokens == 10
    assert stats.tokens_per_s == 5.0
    assert stats.prefix_accept == [] and stats.cond_accept == []
    assert stats.verify_ms_per_round == 150.0
