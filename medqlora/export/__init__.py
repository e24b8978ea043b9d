"""The export stage: adapter, manifest and copies, merged 16-bit weights, GGUF."""
