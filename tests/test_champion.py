"""The champion policy: one pure function decides promotion and the blocking check."""

from __future__ import annotations

from dspark_core.recipes.champion import Champion, ChampionPolicy, Contender, decide_champion


def test_first_draft_becomes_champion():
    decision = decide_champion(Contender("1", 1.3), None)
    assert decision.promote and decision.passes_check and decision.champion_version == "1"


def test_better_or_equal_tau_is_promoted_worse_is_kept():
    champion = Champion("1", 1.50)
    assert decide_champion(Contender("2", 1.50), champion).promote
    better = decide_champion(Contender("2", 1.60), champion)
    assert better.promote and better.champion_version == "2"
    within = decide_champion(Contender("2", 1.49), champion, ChampionPolicy(tau_margin=0.02))
    assert not within.promote and within.passes_check and within.champion_version == "1"
    worse = decide_champion(Contender("2", 1.40), champion, ChampionPolicy(tau_margin=0.02))
    assert not worse.promote and not worse.passes_check


def test_tau_measured_otherwise_is_not_compared():
    decision = decide_champion(Contender("2", 1.1), Champion("1", None))
    assert decision.promote and decision.passes_check and "never evaluated this way" in decision.reason


def test_the_champion_itself_is_neither_promoted_again_nor_blocked():
    decision = decide_champion(Contender("3", 1.0), Champion("3", 2.0))
    assert not decision.promote and decision.passes_check and decision.champion_version == "3"


def test_a_rolled_back_version_is_never_promoted_automatically():
    decision = decide_champion(Contender("2", 9.0, rolled_back=True), Champion("1", 1.0))
    assert not decision.promote and decision.passes_check and "rolled back" in decision.reason
    assert not decide_champion(Contender("2", 9.0, rolled_back=True), None).promote


def test_a_draft_slower_than_autoregressive_decoding_is_never_promoted():
    slow = decide_champion(Contender("1", 1.5, speedup=0.94), None)
    assert not slow.promote and slow.passes_check and slow.champion_version == "none" and "0.94×" in slow.reason
    kept = decide_champion(Contender("2", 1.6, speedup=0.9), Champion("1", 1.3))
    assert not kept.promote and kept.passes_check and kept.champion_version == "1"
    assert decide_champion(Contender("2", 1.6, speedup=1.06), Champion("1", 1.3)).promote
    assert decide_champion(Contender("2", 1.6, speedup=0.9), Champion("1", 1.3), ChampionPolicy(min_speedup=0)).promote
    assert decide_champion(Contender("2", 1.6), Champion("1", 1.3)).promote  # speed not measured: τ decides
    # a slow draft far below the champion still fails the blocking check
    assert not decide_champion(Contender("2", 1.0, speedup=0.8), Champion("1", 1.3)).passes_check
