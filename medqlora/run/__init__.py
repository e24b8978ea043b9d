"""On top: the CLI that chains the notebooks, batches, comparison, reports, Colab Enterprise, notebook helpers."""
