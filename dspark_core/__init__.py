"""dspark_core: speculative-decoding draft modules as a plain PyTorch/transformers library.

No orchestration imports here (no dagster, no mlflow): everything works from a notebook.
"""

__version__ = "0.1.0"
