"""The setup and train stages: model backends and loading, the memory estimate and plan, packing, training."""
