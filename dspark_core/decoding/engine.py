"""The speculative decoding engine: batched draft -> verify rounds over a target with a KV cache.

With no drafter (or `speculative=False`) every round verifies zero draft tokens, which is plain
autoregressive decoding through the same code: the baseline for every speed-up figure.

Each round may verify a different number of drafted tokens per request (`ScheduleConfig`: all of them,
those above a confidence threshold, or the lengths the hardware-aware scheduler picks); the blocks are
padded into one target pass. With `max_batch`, at most that many requests are active at once and a finished
request's slot goes to the next prompt, whose prompt rides along in the next round's pass (continuous
batching, as a server runs it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.decoding.kv_cache import BatchedKVCache
from dspark_core.decoding.metrics import DecodingStats, RoundRecord, summarize
from dspark_core.decoding.sampling import SamplingConfig, probabilities
from dspark_core.decoding.scheduler import ScheduleConfig, verified_lengths
from dspark_core.decoding.step_cost import StepCostProfile
from dspark_core.decoding.verification import verify_greedy, verify_sampled
from dspark_core.errors import ConfigError, PromptError
from dspark_core.models.target import TargetModel
from dspark_core.settings import DEFAULT_DECODE_BLOCK_SIZE, check_settings, setting


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = setting(128, "Most tokens generated per request", min=1)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    #: γ, the most draft tokens proposed and verified per round
    block_size: int = setting(DEFAULT_DECODE_BLOCK_SIZE, "Most draft tokens proposed and verified per round "
                                                         "(at most the draft's γ; more pays on a GPU, less on a CPU)", min=0)
    #: the one switch that turns the draft module on or off
    speculative: bool = True
    stop_at_eos: bool = True
    seed: int = setting(0, "Sampling seed")
    #: how many of the drafted tokens each request verifies per round
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_batch: int | None = setting(None, "Most requests decoded at once; the others wait and take the slot of the "
                                          "next one that finishes (empty: all at once)", min=1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class RequestOutput:
    prompt_tokens: list[int]
    tokens: list[int]  # generated tokens only
    finish_reason: str  # "eos" | "length" | "context"
    rounds: list[RoundRecord]
    #: seconds from the request's admission into the batch to its last token
    latency_s: float = 0.0


@dataclass
class GenerationResult:
    outputs: list[RequestOutput]
    stats: DecodingStats


class SpeculativeEngine:
    """Decode a batch of prompts with `target`, drafting with `drafter` (None: autoregressive)."""

    def __init__(self, target: TargetModel, drafter: Drafter | None = None,
                 step_costs: StepCostProfile | None = None):
        self.target = target
        self.drafter = drafter
        #: the target's measured pass costs: the `scheduled` verification mode needs them; with them, every pass is
        #: run at the cheapest measured width at least as wide as its block (`StepCostProfile.padded_width`)
        self.step_costs = step_costs

    def generate(self, prompts: list[list[int]], config: GenerationConfig = GenerationConfig()) -> GenerationResult:
        target, device = self.target, self.target.device
        if not prompts:
            raise PromptError("no prompts given")
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise PromptError(f"prompt #{index} is empty; every request needs at least one token")
            target.check_prompt_length(len(prompt))

        drafter = self.drafter if config.speculative and config.block_size > 0 else None
        layer_ids = drafter.feature_layers if drafter else ()
        want_features = drafter is not None and drafter.wants_features
        if drafter is not None and config.schedule.mode == "scheduled" and self.step_costs is None:
            raise ConfigError("scheduled verification needs the target's step-cost profile: pass step_costs= "
                              "(dspark_core.decoding.step_cost.ensure_profile), or choose schedule mode "
                              "'fixed' or 'threshold'")
        generator = torch.Generator(device=device).manual_seed(config.seed)
        eos = target.eos_token_ids if config.stop_at_eos else frozenset()
        started = time.perf_counter()

        first = len(prompts) if config.max_batch is None else min(config.max_batch, len(prompts))
        waiting = list(range(first, len(prompts)))  # request ids not admitted yet, in order
        tokens = [list(p) for p in prompts]
        kv = BatchedKVCache(target.forward_features, first, device)
        new_features: list = [None] * first
        prefill_s = 0.0
        if want_features:
            # The drafter needs the context's features before its first proposal: prefill all but the last
            # prompt token (the first anchor). Otherwise the prompt rides along in the first round's pass, as
            # the prompts of requests admitted later always do (they draft from their second round on).
            context = DraftProposal.from_lists([p[:-1] for p in prompts[:first]], device=device)
            if context.tokens.shape[1]:
                prefill = kv.extend(context.tokens, context.lengths, layer_ids=layer_ids, with_logits=False)
                new_features = [prefill.select((r, slice(0, int(n)))) for r, n in enumerate(context.lengths)]
            prefill_s = time.perf_counter() - started

        if drafter:
            drafter.begin([list(p) for p in prompts])
        active = list(range(first))
        admitted_at = [started] * len(prompts)
        finished_at = [started] * len(prompts)
        generated = [0] * len(prompts)
        records: list[list[RoundRecord]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        draft_s = verify_s = 0.0
        batch_rounds = timed_rounds = 0
        try:
            while active:
                batch_rounds += 1
                cached = kv.lengths.tolist()
                # Committed tokens not yet in the cache: a whole prompt in a request's first merged round, else the anchor.
                uncached = [tokens[i][cached[row]:] for row, i in enumerate(active)]
                limits = [
                    0 if want_features and len(u) > 1 else  # no target features of this prompt yet
                    max(0, min(config.block_size, config.max_new_tokens - generated[i] - 1,
                               target.max_context - len(tokens[i]) - 1))
                    for i, u in zip(active, uncached)
                ]
                t0 = time.perf_counter()
                proposal = self._propose(drafter, active, tokens, limits, new_features, config, generator, device)
                confidences = None if proposal.confidences is None else proposal.confidences.tolist()
                drafted = proposal.tokens.tolist()
                if drafter is not None and config.schedule.mode != "fixed" and confidences is not None:
                    proposal.lengths = torch.tensor(
                        verified_lengths(config.schedule, confidences, proposal.lengths.tolist(),
                                         self._round_cost(uncached, draft_s / timed_rounds if timed_rounds else 0.0)),
                        dtype=torch.long, device=device)
                    proposal = proposal.trimmed()  # no target logits for drafts nobody verifies
                proposed = proposal.lengths.tolist()
                t1 = time.perf_counter()
                block = DraftProposal.from_lists(
                    [u + d[:n] for u, d, n in zip(uncached, drafted, proposed)], device=device
                )
                columns = self._pass_width(len(active), block.tokens.shape[1], uncached)
                tokens_in = torch.nn.functional.pad(block.tokens, (0, columns - block.tokens.shape[1]))
                out = kv.extend(tokens_in, block.lengths, layer_ids=layer_ids, with_logits=False)
                # Logits only where verification looks: the last uncached token and the drafts after it (over the
                # padded width, when the pass was padded: what the profile measured; the extra rows are dropped).
                width = proposal.tokens.shape[1]
                starts = torch.tensor([len(u) - 1 for u in uncached], dtype=torch.long, device=device)
                head = width + 1 if columns == block.tokens.shape[1] else max(width + 1, columns)
                index = (starts[:, None] + torch.arange(head, device=device)).clamp_max(columns - 1)
                hidden = out.last_hidden.gather(1, index[:, :, None].expand(-1, -1, out.last_hidden.shape[-1]))
                logits = target.lm_logits(hidden)[:, : width + 1]
                if config.sampling.greedy:
                    result = verify_greedy(proposal.tokens, proposal.lengths, logits)
                else:
                    target_probs = probabilities(logits, config.sampling)
                    result = verify_sampled(proposal.tokens, proposal.lengths, proposal.probs, target_probs, generator)
                # The uncached tokens and the accepted drafts stay cached; rejected drafts become holes.
                kv.truncate(kv.lengths - proposal.lengths + result.accepted)
                t2 = time.perf_counter()
                if max(len(u) for u in uncached) > 1:
                    prefill_s += t2 - t1  # this pass processed a prompt: count it as prefill, not a round
                else:
                    verify_s += t2 - t1
                    draft_s += t1 - t0
                    timed_rounds += 1

                accepted = result.accepted.tolist()
                next_tokens = result.next_token.tolist()
                keep_rows, new_features = [], []
                for row, i in enumerate(active):
                    n = accepted[row]
                    committed = drafted[row][:n] + [next_tokens[row]]
                    judged = proposed[row]
                    eos_at = next((j for j, tok in enumerate(committed) if tok in eos), None)
                    if eos_at is not None:
                        committed = committed[: eos_at + 1]
                        if eos_at < n:  # EOS inside the accepted prefix: later drafts were never judged
                            n = judged = eos_at + 1
                        finish[i] = "eos"
                    tokens[i].extend(committed)
                    generated[i] += len(committed)
                    records[i].append(RoundRecord(proposed=judged, accepted=n, emitted=len(committed),
                                                  confidences=() if confidences is None
                                                  else tuple(confidences[row][:judged])))
                    if finish[i] is None and generated[i] >= config.max_new_tokens:
                        finish[i] = "length"
                    if finish[i] is None and len(tokens[i]) >= target.max_context:
                        finish[i] = "context"
                    if finish[i] is None:
                        keep_rows.append(row)
                        if want_features:
                            new_features.append(out.select((row, slice(0, len(uncached[row]) + accepted[row]))))
                    else:
                        finished_at[i] = time.perf_counter()
                if len(keep_rows) < len(active):
                    kv.select_rows(torch.tensor(keep_rows, dtype=torch.long, device=device))
                    active = [active[row] for row in keep_rows]
                if not want_features:
                    new_features = [None] * len(active)
                admit = waiting[: first - len(active)]
                if admit:  # freed slots go to the next prompts
                    del waiting[: len(admit)]
                    kv.add_rows(len(admit))
                    active += admit
                    new_features += [None] * len(admit)
                    now = time.perf_counter()
                    for i in admit:
                        admitted_at[i] = now
        finally:
            if drafter:
                drafter.end()

        wall_s = time.perf_counter() - started
        outputs = [
            RequestOutput(prompt_tokens=list(p), tokens=t[len(p):], finish_reason=f or "length", rounds=r,
                          latency_s=done - begun)
            for p, t, f, r, begun, done in zip(prompts, tokens, finish, records, admitted_at, finished_at)
        ]
        stats = summarize(
            [rec for recs in records for rec in recs],
            requests=len(prompts),
            batch_rounds=batch_rounds,
            timed_rounds=timed_rounds,
            wall_s=wall_s,
            prefill_s=prefill_s,
            draft_s=draft_s,
            verify_s=verify_s,
        )
        return GenerationResult(outputs=outputs, stats=stats)

    def _pass_width(self, rows: int, width: int, uncached: list[list[int]]) -> int:
        """Columns to run this round's pass with: `width`, or the cheapest wider width of the step-cost profile
        (the extra columns are masked holes, dropped from the cache again). Passes that carry a prompt are not
        padded."""
        if self.step_costs is None or max(len(u) for u in uncached) > 1:
            return width
        return self.step_costs.padded_width(rows, width)

    def _round_cost(self, uncached: list[list[int]], draft_seconds: float):
        """This round's seconds as a function of the verified lengths: the drafting it already spent (the mean of
        this call's earlier rounds: measured, and independent of what is drafted now) plus the profiled pass."""
        profile, counts = self.step_costs, [len(u) for u in uncached]
        return None if profile is None else lambda lengths: draft_seconds + profile.pass_cost(lengths, counts)

    @staticmethod
    def _propose(drafter, active, tokens, limits, new_features, config, generator, device) -> DraftProposal:
        if drafter is None or not any(limits):
            return DraftProposal.from_lists([[] for _ in active], device=device)
        proposal = drafter.propose(
            DraftRequest(
                request_ids=list(active),
                tokens=[tokens[i] for i in active],
                max_lengths=limits,
                new_features=new_features,
                sampling=config.sampling,
                generator=generator,
            )
        )
        # A drafter may propose fewer tokens than allowed, never more.
        cap = torch.tensor(limits, dtype=torch.long, device=proposal.lengths.device)
        proposal.lengths = torch.minimum(proposal.lengths.to(device), cap.to(device))
        proposal.tokens = proposal.tokens.to(device)
        if proposal.probs is not None:
            proposal.probs = proposal.probs.to(device)
        return proposal
