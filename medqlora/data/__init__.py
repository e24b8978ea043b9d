"""The preprocess stage: reading files row by row (sources), formats, prompt templates, tokenizing."""
