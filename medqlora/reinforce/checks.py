"""The rl: section's input checks, before any notebook runs (the runner's validation calls problems())."""
from __future__ import annotations

import importlib.util
import os

from medqlora.config import PATH_HELP, RunConfig, is_local_path
from medqlora.config.checks import _check_optimizer, _check_protocol


def vllm_ready() -> tuple[bool, str]:
    """Whether vLLM generation can be used here (a CUDA GPU, Unsloth and vllm), and what is missing."""
    missing = [n for n in ("unsloth", "vllm") if importlib.util.find_spec(n) is None]
    from medqlora.training.model import cuda_available

    if not cuda_available():
        missing.insert(0, "a CUDA GPU")
    return not missing, ", ".join(missing)


def problems(cfg: RunConfig) -> list[str]:
    """What would make the reinforce stage fail, found without loading a model: a missing rl.source, an unknown
    optimizer, vLLM asked for where it cannot run, and (with memory.budget_gb) a GRPO step that cannot fit."""
    rl = cfg.rl
    if rl is None:
        return []
    out = []
    if rl.source and is_local_path(rl.source) and not os.path.lexists(os.path.expanduser(rl.source)):
        out.append(f"rl.source: file not found: {rl.source}; give an existing file ({PATH_HELP}) or a hub dataset "
                   "name, or leave rl.source out to use data.source's closed-form items")
    if rl.source and "://" in rl.source:
        out += _check_protocol("rl.source", rl.source)
    out += [p.replace("train.optimizer", "rl.optimizer") for p in _check_optimizer(rl.optimizer)]
    if rl.use_vllm is True:
        ok, missing = vllm_ready()
        if not ok:
            out.append(f"rl.use_vllm: true needs a CUDA GPU, Unsloth and vllm; missing here: {missing}. Set "
                       "rl.use_vllm: auto (vLLM where it can run, transformers generation elsewhere) or false")
    if not out:
        from medqlora.reinforce.memory import preflight

        out += preflight(cfg)
    return out
