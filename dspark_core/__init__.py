"""dspark_core: speculative-decoding draft modules as a plain PyTorch/transformers library.

No orchestration imports here (no dagster, no mlflow): everything works from a notebook.
"""

__version__ = "0.1.0"

from dspark_core.numerics import warm_up_vector_math as _warm_up_vector_math

_warm_up_vector_math()  # before any multi-threaded use of torch's CPU math (see numerics.py)
