"""The evaluate stage: generation, scoring and metrics, asking a trained run."""
