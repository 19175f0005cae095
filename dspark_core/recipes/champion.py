"""Stage 7, champion: the pure policy deciding whether an evaluated draft version becomes its base model's
champion, and whether it passes the champion check. Registries (MLflow) feed it and act on its answer."""

from __future__ import annotations

from dataclasses import dataclass

from dspark_core.settings import check_settings, setting

__all__ = ["Champion", "ChampionDecision", "ChampionPolicy", "Contender", "decide_champion"]


@dataclass(frozen=True)
class ChampionPolicy:
    tau_margin: float = setting(0.02, "The champion check fails when τ is below the champion's τ by more than this", min=0)
    min_speedup: float = setting(1.0, "Promote only a draft that decoded at least this many times as fast as "
                                      "autoregressive decoding in its evaluation (0: whatever its speed)", min=0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Contender:
    """The draft version just evaluated."""

    version: str
    tau: float
    #: a version that was rolled back is not promoted again automatically
    rolled_back: bool = False
    #: its wall-clock speed-up over autoregressive decoding in the same evaluation (None: not measured)
    speedup: float | None = None


@dataclass(frozen=True)
class Champion:
    """The current champion; `tau` is its τ measured the same way as the contender's (None: never measured so)."""

    version: str
    tau: float | None


@dataclass(frozen=True)
class ChampionDecision:
    promote: bool
    #: the blocking check: the contender is not worse than the champion by more than the margin
    passes_check: bool
    reason: str
    #: the champion after the decision
    champion_version: str


def decide_champion(contender: Contender, champion: Champion | None,
                    policy: ChampionPolicy = ChampionPolicy()) -> ChampionDecision:
    """Promote when there is no champion, the contender is the champion, τ was never compared, or τ is at least
    the champion's; never promote a rolled-back version, nor one that decoded slower than `policy.min_speedup`
    times autoregressive decoding (serving it would slow requests down). The check passes within
    `policy.tau_margin` of the champion's τ."""
    if champion is not None and champion.version == contender.version:
        return ChampionDecision(False, True, f"version {contender.version} is the champion already", champion.version)
    kept = "none" if champion is None else champion.version
    if champion is None or champion.tau is None:
        passes, better = True, True
        reason = ("no champion yet" if champion is None else
                  f"the champion (version {champion.version}) was never evaluated this way; τ not compared")
    else:
        passes = contender.tau >= champion.tau - policy.tau_margin
        better = contender.tau >= champion.tau
        reason = (f"τ {contender.tau:.3f} vs the champion's {champion.tau:.3f} (version {champion.version}, "
                  f"margin {policy.tau_margin})")
    if contender.rolled_back:
        return ChampionDecision(False, passes, f"version {contender.version} was rolled back; `dspark drafts promote` "
                                               f"re-arms it", kept)
    if better and contender.speedup is not None and contender.speedup < policy.min_speedup:
        return ChampionDecision(False, passes, f"{reason}; but it decoded at {contender.speedup:.2f}× the speed of "
                                               f"autoregressive decoding, below the {policy.min_speedup:.2f}× a "
                                               f"champion needs", kept)
    return ChampionDecision(better, passes, reason, contender.version if better else kept)
