"""Importing dspark_core settles oneMKL's vector-math kernels before torch runs them on several threads."""

import subprocess
import sys

#: a fresh process: many intra-op threads, already started (the race needs concurrent first calls), then each function's first
#: multi-threaded call compared with float64. Without the warm-up about one such process in seven got a
#: chunk wrong here (oneMKL 2024.2, 2 cores); eight processes at once caught a missing warm-up in 2 of 4 runs.
FIRST_CALLS = """
import torch
torch.set_num_threads(8)
import dspark_core
torch.randn(256, 512) @ torch.randn(512, 256)  # the thread pool is up before the first calls
x = torch.linspace(0.01, 3.0, 65536)
for name in ("cos", "exp", "sin", "log", "tanh", "sqrt"):
    got, exact = getattr(torch, name)(x).double(), getattr(torch, name)(x.double())
    error = float(((got - exact).abs() / exact.abs().clamp_min(1e-3)).max())
    assert error < 1e-6, f"first multi-threaded torch.{name} is off by {error:.1e}"
"""


def test_first_multithreaded_calls_of_vector_math_are_accurate_after_import():
    processes = [subprocess.Popen([sys.executable, "-c", FIRST_CALLS], stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
    failures = [p.communicate()[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(f for f in failures if f)
