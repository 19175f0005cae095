"""The target's step-cost profile: measured seconds of one verification pass as a function of the batch shape
(requests × tokens per request), on this device, for this model revision. The scheduler trades each extra
verified token's cost, read from here, against its predicted survival.

The scheduler's cost model is per token: a round verifying lengths ℓ_r costs the pass of B = Σ_r (1 + ℓ_r)
tokens, read as t(R, B / R) — R requests of B / R tokens each, interpolated between measured widths. That is
exact for one request and for equal lengths; for unequal lengths in a batch it is the cost a ragged (packed)
engine would pay, while this engine pads every block to the longest one, so there the real pass can cost
more than the model says. Where the measured cost is not monotone in width (on some CPUs a 4-token pass costs
less than a 3-token one: their BLAS multiplies 2- and 3-row matrices slowly), the engine pads a pass to the
cheapest measured width at least as wide, and the cost model charges that (`padded_width`, `padded_seconds`). A model that charged the padding would make the admission of one request's
position depend on whether other positions widen the pass too, which breaks the early stop. Profiles are stored as JSON under
`$DSPARK_HOME/profiles/` with the device description, dtype, torch version and model revision they were
measured with; `ensure_profile` rebuilds one that is missing or measured under other conditions.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from dspark_core.decoding.kv_cache import BatchedKVCache
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.spec import slugify
from dspark_core.models.target import TargetModel
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.schemas import StepCostProfileFile, read_json
from dspark_core.settings import check_settings, setting

_FORMAT = 1


@dataclass(frozen=True)
class ProfileConfig:
    rows: tuple[int, ...] = setting((1, 2, 4, 8), "Batch sizes (concurrent requests) to measure")
    max_width: int = setting(9, "Measure passes of 1..this many tokens per request (a block of γ drafts is γ + 1)", min=1)
    context_tokens: int = setting(256, "Tokens already in each request's KV cache during the measured passes", min=1)
    warmup: int = setting(2, "Unmeasured passes before each measurement", min=0)
    repetitions: int = setting(5, "Measured passes per shape (the median is kept)", min=1)
    seed: int = setting(0, "Seed of the random context tokens")

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "rows", tuple(sorted(set(int(r) for r in self.rows))))
        if not self.rows or self.rows[0] < 1:
            raise ConfigError(f"profile rows must be >= 1, got {self.rows}")


@dataclass
class StepCostProfile:
    target_spec: str
    target_revision: str | None
    device: str  # human-readable description of the hardware
    dtype: str
    torch_version: str
    context_tokens: int
    rows: list[int]
    widths: list[int]
    #: median milliseconds of one pass, ms[i][j] for rows[i] requests × widths[j] tokens each
    ms: list[list[float]]
    repetitions: int
    measured_at: str
    format: int = _FORMAT
    path: Path | None = field(default=None, compare=False)

    def seconds(self, rows: float, width: float) -> float:
        """Cost of one pass of `rows` requests × `width` tokens: measured where it was, else interpolated
        linearly between the nearest measured shapes (extrapolated from the last two beyond them)."""
        per_row = [_interpolate(self.widths, line, width) for line in self.ms]
        return max(_interpolate(self.rows, per_row, rows), 1e-6) / 1e3

    def padded_width(self, rows: int, width: int) -> int:
        """The width to run a pass of `width` tokens per request at: the measured width ≥ `width` that costs least
        (padding columns are masked out, so the result is the same). On CPUs whose BLAS handles 2- or 3-row
        matrix products slowly a 4-token pass can cost less than a 3-token one; where cost grows with width this
        is `width` itself."""
        if rows not in self.rows:  # the slow shapes are the matrix products' row counts: only where measured
            return width
        wider = [w for w in self.widths if w > width]
        return min([width, *wider], key=lambda w: (self.seconds(rows, w), w))

    def padded_seconds(self, rows: float, width: float) -> float:
        """Cost of a pass of `width` tokens per request as the engine runs it, padded to the cheapest width at
        least as wide (`padded_width`): never more than `seconds(rows, width)`, and non-decreasing in width."""
        if rows not in self.rows:  # as `padded_width`: no padding where the batch size was not measured
            return self.seconds(rows, width)
        if width > self.widths[-1]:  # extrapolated: never below the widest measured pass, whatever the last slope
            return max(self.seconds(rows, width), self.padded_seconds(rows, self.widths[-1]))
        return min([self.seconds(rows, width), *(self.seconds(rows, w) for w in self.widths if w >= width)])

    def pass_cost(self, lengths: Sequence[int], uncached: Sequence[int] | None = None) -> float:
        """Seconds of one round's pass, given each request's verified draft length and how many committed tokens
        each still has to put through the target (1, the anchor, unless a prompt rides along): the pass of
        B = Σ (uncached + ℓ) tokens over R requests (module docstring), padded as the engine pads it (it does not
        pad a pass that carries a prompt)."""
        uncached = uncached or [1] * len(lengths)
        width = sum(u + n for u, n in zip(uncached, lengths)) / max(len(lengths), 1)
        cost = self.seconds if max(uncached, default=1) > 1 else self.padded_seconds
        return cost(len(lengths), width)

    def table(self) -> tuple[list[str], list[list]]:
        """(columns, rows) for display: median ms of one pass per batch size (rows) and tokens per request."""
        columns = ["requests", *[f"{w} tok" for w in self.widths]]
        return columns, [[r, *line] for r, line in zip(self.rows, self.ms)]

    def relative_to_single_step(self) -> list[list[float]]:
        """Each shape's cost in autoregressive steps of the same batch (width 1)."""
        return [[ms / line[0] for ms in line] for line in self.ms]

    def stale_reason(self, target: TargetModel) -> str | None:
        """Why this profile does not describe `target` on this machine (None: it does)."""
        current = {"target_revision": target.revision, "device": device_description(target.device),
                   "dtype": str(target.dtype).removeprefix("torch."), "torch_version": torch.__version__}
        for key, value in current.items():
            if getattr(self, key) != value:
                return f"{key} was {getattr(self, key)!r}, now {value!r}"
        if self.format != _FORMAT:
            return f"profile format {self.format}, expected {_FORMAT}"
        return None

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> "StepCostProfile":
        return cls(**data, path=path)


def _interpolate(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0] * x / xs[0]  # one measured point: proportional
    i = min(max(bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def device_description(device: torch.device | str) -> str:
    """The hardware a measurement describes: GPU name, or CPU model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}, {torch.get_num_threads()} threads of {os.cpu_count()}"


def profile_path(target: TargetModel) -> Path:
    dtype = str(target.dtype).removeprefix("torch.")
    return dspark_home() / "profiles" / f"{slugify(target.spec)}-{target.device.type}-{dtype}.json"


@torch.inference_mode()
def measure_profile(target: TargetModel, config: ProfileConfig = ProfileConfig(), *,
                    progress: bool = False) -> StepCostProfile:
    """Time verification passes exactly as the engine runs them (KV cache extended by a padded block, LM head
    over the block, block dropped again) for every batch size and width of `config`."""
    if config.context_tokens + config.max_width > target.max_context:
        raise ConfigError(f"a profile context of {config.context_tokens} + {config.max_width} tokens exceeds "
                          f"{target.spec}'s context of {target.max_context}; lower context_tokens")
    generator = torch.Generator().manual_seed(config.seed)
    widths = list(range(1, config.max_width + 1))
    table = []
    bar = tqdm(total=len(config.rows) * len(widths), desc="step-cost profile", disable=not progress)
    for rows in config.rows:
        context = torch.randint(0, target.vocab_size, (rows, config.context_tokens), generator=generator)
        kv = BatchedKVCache(target.forward_features, rows, target.device)
        kv.extend(context.to(target.device), torch.full((rows,), config.context_tokens, device=target.device),
                  with_logits=False)
        line = []
        if rows == config.rows[0]:  # the process's first passes also warm up allocators and kernels
            for _ in range(3):
                warm = torch.randint(0, target.vocab_size, (rows, config.max_width), generator=generator)
                kv.extend(warm.to(target.device), torch.full((rows,), config.max_width, device=target.device),
                          with_logits=False)
                kv.truncate(kv.lengths - config.max_width)
        for width in widths:
            block = torch.randint(0, target.vocab_size, (rows, width), generator=generator).to(target.device)
            counts = torch.full((rows,), width, device=target.device)
            times = []
            for rep in range(config.warmup + config.repetitions):
                _synchronize(target.device)
                started = time.perf_counter()
                out = kv.extend(block, counts, with_logits=False)
                target.lm_logits(out.last_hidden)
                _synchronize(target.device)
                if rep >= config.warmup:
                    times.append(time.perf_counter() - started)
                kv.truncate(kv.lengths - counts)
            line.append(round(statistics.median(times) * 1e3, 3))
            bar.update()
        table.append(line)
    bar.close()
    return StepCostProfile(
        target_spec=target.spec, target_revision=target.revision, device=device_description(target.device),
        dtype=str(target.dtype).removeprefix("torch."), torch_version=torch.__version__,
        context_tokens=config.context_tokens, rows=list(config.rows), widths=widths, ms=table,
        repetitions=config.repetitions, measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_profile(path: Path) -> StepCostProfile:
    data = read_json(Path(path), StepCostProfileFile, fix="delete it or run `dspark profile --rebuild`")
    return StepCostProfile.from_dict({name: data[name] for name in StepCostProfileFile.model_fields}, path=Path(path))


def ensure_profile(target: TargetModel, config: ProfileConfig = ProfileConfig(), *, rebuild: bool = False,
                   progress: bool = False) -> tuple[StepCostProfile, str | None]:
    """The stored profile of `target` on this device; measured (and stored) when missing, stale, narrower
    than `config.max_width` or `rebuild`. Returns (profile, why it was measured now, or None if reused)."""
    path = profile_path(target)
    reason = "rebuild requested" if rebuild else None
    if reason is None and not path.exists():
        reason = "no profile yet"
    if reason is None:
        stored = load_profile(path)
        reason = stored.stale_reason(target)
        if reason is None and stored.context_tokens != config.context_tokens:
            reason = f"measured with {stored.context_tokens} context tokens, {config.context_tokens} asked"
        if reason is None and (stored.widths[-1] < config.max_width or not set(config.rows) <= set(stored.rows)):
            reason = "the stored profile covers fewer shapes than asked"
        if reason is None:
            return stored, None
    profile = measure_profile(target, config, progress=progress)
    write_json_atomic(path, profile.to_dict())
    profile.path = path
    return profile, reason


#: widths measured beyond a decoding's widest pass, where a padded pass may be cheaper
PADDING_WIDTHS = 2


def decoding_profile(target: TargetModel, block_size: int, *, progress: bool = False) -> StepCostProfile | None:
    """The profile a decoding of blocks of up to `block_size` drafts pads its passes by (`padded_width`): the stored
    one when it is current and covers one request at widths up to block_size + 1 + PADDING_WIDTHS (whatever context
    it was measured at), else those widths measured for one request (seconds on a CPU for a small model). None
    (no padding) where none can be measured: a context too short for it, a home that cannot be written."""
    width = min(ProfileConfig().max_width, block_size + 1 + PADDING_WIDTHS)
    path = profile_path(target)
    if path.exists():
        try:
            stored = load_profile(path)
        except DsparkError:
            stored = None  # measured again below, replacing the damaged file
        if stored is not None and stored.stale_reason(target) is None and 1 in stored.rows \
                and stored.widths[-1] >= width:
            return stored
    try:
        config = ProfileConfig(rows=(1,), max_width=width,
                               context_tokens=min(ProfileConfig().context_tokens, target.max_context - width))
        return ensure_profile(target, config, progress=progress)[0]
    except (ConfigError, OSError):
        return None

