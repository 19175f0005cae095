"""Evaluation: speculative decoding on held-out prompts against the autoregressive baseline, quality
checks of drafts and caches, and the plots the platform shows."""
