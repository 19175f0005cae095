"""Training data: prompt sources, response regeneration by the target, and the target feature cache."""
