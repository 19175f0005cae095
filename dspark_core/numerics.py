"""Process-wide numerical hygiene, applied once when dspark_core is imported.

PyTorch's CPU build routes float32/float64 transcendental functions (exp, log, cos, sin, tanh, ...) to oneMKL's
vector math library, which picks each function's kernel on its first call. When that first call runs on several
intra-op threads at once, one thread can take a low-accuracy kernel for its chunk of that one call (errors near
1e-4; pytorch/pytorch#188792, oneMKL 2024.2 as bundled with the torch wheels). On 2 cores this hit about one
training process in fifty here, enough that a killed and resumed training run, or two identical runs, ended with
different weights. Calling every such function once on a one-element tensor, on one thread, settles the choice
before any concurrent use. It costs well under a millisecond.
"""

from __future__ import annotations

import torch

#: the unary functions ATen may hand to oneMKL's vector math (aten/src/ATen/cpu/vml.h), and their neighbours
VECTOR_MATH_FUNCTIONS = ("exp", "expm1", "exp2", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "cos", "sin", "tan",
                         "acos", "asin", "atan", "cosh", "sinh", "tanh", "erf", "erfc", "erfinv", "sigmoid", "trunc")


def warm_up_vector_math() -> None:
    """Call each vector-math function once per floating precision on a one-element tensor (one thread)."""
    for dtype in (torch.float32, torch.float64):
        value = torch.full((1,), 0.5, dtype=dtype)
        for name in VECTOR_MATH_FUNCTIONS:
            getattr(torch, name)(value)
