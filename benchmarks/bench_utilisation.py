"""How close each stage comes to what the machine can do: attainable matrix-multiply throughput, and each stage's
achieved FLOP/s as a fraction of it.

Attainable: the median GFLOP/s of `torch.matmul` (2·m·n·k FLOPs) in float32 and bfloat16, at a large square shape
and at the shapes our models use (the target's MLP over a training sequence, the LM head over the draft
vocabulary, a draft block of a few slots).

Achieved: FLOPs of one run of each stage counted by torch's FLOP counter (`torch.utils.flop_counter`: matrix
multiplies, attention, in forward and backward; elementwise work, the optimizer and data movement are not
counted, so the figure is a floor), divided by its median wall time:

  * a training step of each drafter (collation, forward, backward, clipping, optimizer), at the default recipe,
    in each of --train-modes (float32 and bfloat16 autocast, eager and compiled), on the same batch; utilisation
    against the attainable figure of the precision the step's matmuls run in;
  * a feature-cache pass of the target over one 512-token sequence (its layers tapped);
  * a verification pass (R requests × w tokens on a 256-token KV cache, then the LM head), as the engine runs it;
  * a draft round of the DSpark drafter for R = 1 and R = 8 requests (one batched pass).

Utilisation = achieved / attainable at the large shape, same dtype. On a GPU the same script runs on CUDA.

Usage:
  python benchmarks/bench_utilisation.py --cache CACHE [--target smollm2-135m] [--drafters dspark,dflash,eagle3]
         [--train-modes float32,bfloat16,bfloat16+compile] [--out benchmarks/results/utilisation-cpu.json]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device, *, warmup: int = 2, repeats: int = 5,
          min_seconds: float = 0.0) -> float:
    """Median seconds of `run` after `warmup` calls (at least `repeats` timed calls, more until `min_seconds`)."""
    for _ in range(warmup):
        run()
    times = []
    while len(times) < repeats or sum(times) < min_seconds:
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def counted_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of `run`, as torch's FLOP counter counts them."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def attainable(device: torch.device, hidden: int, intermediate: int, draft_vocab: int) -> list[dict]:
    """GFLOP/s of matmul at a large shape and at ours, float32 and bfloat16."""
    shapes = {"large (2048 x 2048 x 2048)": (2048, 2048, 2048),
              f"target MLP over 512 tokens ({512} x {hidden} x {intermediate})": (512, hidden, intermediate),
              f"LM head over 512 tokens ({512} x {hidden} x {draft_vocab})": (512, hidden, draft_vocab),
              f"draft block of 4 slots (4 x {hidden} x {intermediate})": (4, hidden, intermediate)}
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, (m, k, n) in shapes.items():
            a = torch.randn(m, k, device=device, dtype=dtype)
            b = torch.randn(k, n, device=device, dtype=dtype)
            seconds = timed(lambda: a @ b, device, warmup=3, repeats=5, min_seconds=0.3)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "shape": name,
                         "gflops": 2 * m * n * k / seconds / 1e9})
    return rows


def stage(name: str, run: Callable[[], object], device: torch.device, roof: float, flops: int | None = None,
          **extra) -> dict:
    """One stage's row: its FLOPs (counted from one call unless given), median time, GFLOP/s and share of `roof`."""
    flops = counted_flops(run) if flops is None else flops
    seconds = timed(run, device)
    achieved = flops / seconds / 1e9
    return {"stage": name, "gflop": flops / 1e9, "ms": seconds * 1e3, "gflops": achieved,
            "utilisation": achieved / roof if roof else None, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a feature cache of the target (training steps)")
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--drafters", default="dspark,dflash,eagle3")
    parser.add_argument("--draft-vocab", type=int, default=4096)
    parser.add_argument("--train-modes", default="float32,bfloat16,bfloat16+compile",
                        help="training steps timed in each '<autocast>[+compile]' (dspark train --autocast, --compile)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/utilisation-cpu.json"))
    args = parser.parse_args(argv)
    if args.train_modes.split(",")[0].endswith("+compile"):  # its FLOPs are counted; compiled kernels hide them
        parser.error("--train-modes: the first mode must be eager (its step's FLOPs are counted for every mode)")
    from rich.console import Console
    from rich.table import Table

    from dspark_core.data.feature_cache import FeatureCache
    from dspark_core.decoding.drafter import DraftRequest
    from dspark_core.decoding.kv_cache import BatchedKVCache
    from dspark_core.decoding.sampling import SamplingConfig
    from dspark_core.drafters.checkpoint import attach_target_weights
    from dspark_core.drafters.registry import drafter_kind
    from dspark_core.models import load_target
    from dspark_core.models.target import TargetFeatures
    from dspark_core.paths import write_json_atomic
    from dspark_core.provenance import provenance
    from dspark_core.training.trainer import Batcher, DraftTraining, TrainConfig, precision

    console = Console(highlight=False)
    started_at = provenance()
    target = load_target(args.target)
    device = target.device
    config = target.model.config
    roofs = attainable(device, config.hidden_size, config.intermediate_size, args.draft_vocab)
    roof = {row["dtype"]: row["gflops"] for row in roofs if row["shape"].startswith("large")}
    target_roof = roof[str(target.dtype).removeprefix("torch.")]
    stages = []

    cache = FeatureCache(args.cache, target_revision=target.revision, split="train")
    for algorithm in [d.strip() for d in args.drafters.split(",") if d.strip()]:
        flops = None
        for mode in [m.strip() for m in args.train_modes.split(",") if m.strip()]:
            autocast, _, compiled = mode.partition("+")
            train_config = TrainConfig(algorithm=algorithm, draft_vocab_size=args.draft_vocab, steps=100,
                                       autocast=autocast, compile=compiled == "compile")
            run = DraftTraining(target, cache, train_config)
            batcher = Batcher(len(cache), train_config.batch_size, 0)
            for number in range(3):  # warm-up on batches of three lengths: a compiled step has its dynamic graph
                run.step(number, batcher.next())
            fixed, step = batcher.next(), [3]  # the same batch in every mode (the same seeded order)

            def one_step():
                run.step(step[0], fixed)
                step[0] += 1

            if flops is None:  # the modes do the same arithmetic; count it once, eagerly (compiled kernels hide it)
                flops = counted_flops(one_step)
            dtype = precision(train_config, device.type)
            stages.append(stage(f"training step: {algorithm}, {dtype}{', compiled' if compiled else ''}", one_step,
                                device, roof[dtype], dtype=dtype, batch_size=train_config.batch_size, flops=flops))

    generator = torch.Generator().manual_seed(0)
    sequence = torch.randint(0, target.vocab_size, (1, 512), generator=generator).to(device)
    layers = tuple(cache.layer_ids)
    stages.append(stage("feature-cache pass (512 tokens, layers tapped)",
                        lambda: target.forward_features(sequence, layer_ids=layers, with_logits=True),
                        device, target_roof, dtype=str(target.dtype).removeprefix("torch.")))

    for rows, width in ((1, 1), (1, 3), (8, 3)):
        kv = BatchedKVCache(target.forward_features, rows, device)
        context = torch.randint(0, target.vocab_size, (rows, 256), generator=generator).to(device)
        kv.extend(context, torch.full((rows,), 256, device=device), with_logits=False)
        block = torch.randint(0, target.vocab_size, (rows, width), generator=generator).to(device)
        counts = torch.full((rows,), width, device=device)

        def verify():
            out = kv.extend(block, counts, with_logits=False)
            target.lm_logits(out.last_hidden)
            kv.truncate(kv.lengths - counts)

        stages.append(stage(f"verification pass (R={rows}, {width} tokens, 256 cached)", verify, device, target_roof,
                            dtype=str(target.dtype).removeprefix("torch.")))

    kind = drafter_kind("dspark")
    module = kind.build(kind.module_config(target, target_layer_ids=layers, draft_vocab_size=args.draft_vocab))
    module.to(device=device, dtype=target.dtype)
    attach_target_weights(module, target)
    histories = [torch.randint(0, target.vocab_size, (200 + 16 * r,), generator=generator).tolist() for r in range(8)]
    features = []
    for history in histories:
        out = target.forward_features(torch.tensor([history[:-1]], device=device), layer_ids=layers, with_logits=False)
        features.append(TargetFeatures(last_hidden=out.last_hidden[0], layer_ids=layers,
                                       layers=tuple(x[0] for x in out.layers)))
    for rows in (1, 8):
        drafter = kind.runtime(module.eval())
        drafter.begin(histories)
        first = DraftRequest(list(range(rows)), histories[:rows], [4] * rows, features[:rows],
                             SamplingConfig(temperature=0.0), None)
        drafter.propose(first)  # the contexts go into the draft's caches once, as in decoding
        again = DraftRequest(list(range(rows)), histories[:rows], [4] * rows, [None] * rows,
                             SamplingConfig(temperature=0.0), None)
        stages.append(stage(f"draft round: DSpark, R={rows}", lambda: drafter.propose(again), device,
                            target_roof, dtype=str(target.dtype).removeprefix("torch.")))

    table = Table(title=f"utilisation on {started_at.get('device') or device}")
    for column in ("stage", "GFLOP", "ms", "GFLOP/s", "of attainable"):
        table.add_column(column, justify="right")
    for row in stages:
        table.add_row(row["stage"], f"{row['gflop']:.3f}", f"{row['ms']:.1f}", f"{row['gflops']:.1f}",
                      "–" if row["utilisation"] is None else f"{row['utilisation']:.1%}")
    console.print(table)
    console.print("attainable matmul GFLOP/s: " + "; ".join(f"{r['dtype']} {r['shape']}: {r['gflops']:.1f}" for r in roofs))
    write_json_atomic(args.out, {
        "command": "python benchmarks/bench_utilisation.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        **started_at, "target": target.spec, "target_dtype": str(target.dtype).removeprefix("torch."),
        "attainable": roofs, "stages": stages,
        "counting": "torch.utils.flop_counter.FlopCounterMode: matmuls and attention, forward and backward; "
                    "elementwise work and the optimizer are not counted (achieved FLOP/s is a floor)",
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
