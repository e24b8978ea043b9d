"""What every stage notebook does first, and small display helpers, so that notebooks stay thin."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from medqlora.config import RunConfig, load_config
from medqlora.core.rundir import RunDir

# Messages that say nothing about this run and bury the report's real output.
_QUIET = [r".*TqdmWarning.*", r".*IProgress not found.*", r".*clean_up_tokenization_spaces.*",
          r".*torch.utils.checkpoint.*use_reentrant.*", r".*`torch_dtype` is deprecated.*"]


# Set on import: notebooks import this module before the libraries whose import emits them.
for _pat in _QUIET:
    warnings.filterwarnings("ignore", message=_pat)
warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.checkpoint")
warnings.filterwarnings("ignore", category=SyntaxWarning)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# bitsandbytes asks for the hub-hosted 'kernels' CPU gemm, which offline machines cannot fetch; it falls back.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


_BAR_FILE = {}  # the open run.log each kernel sends library progress bars to


def progress_bars_to_log(path: Path) -> None:
    """Library progress bars (tqdm: GGUF conversion, dataset maps) into the run folder's run.log instead of the
    notebook: in a saved report they are a red stderr block of carriage-return lines that reads like an error.
    (The process's own stderr is no way out: ipykernel forwards file descriptor 2 into the cell too.) Text
    progress meant for the report is printed, not drawn as a bar; a bar given its own file keeps it."""
    import sys

    import tqdm.std

    if _BAR_FILE.get("path") != path:
        _BAR_FILE.update(path=path, file=open(path, "a", buffering=1, encoding="utf-8"))  # noqa: SIM115
    init = getattr(tqdm.std.tqdm.__init__, "_medqlora_init", tqdm.std.tqdm.__init__)

    def __init__(self, *args, **kwargs):
        if len(args) < 5 and kwargs.get("file") in (None, sys.stderr, sys.__stderr__):
            kwargs["file"] = _BAR_FILE["file"]
        init(self, *args, **kwargs)

    __init__._medqlora_init = init
    tqdm.std.tqdm.__init__ = __init__


def _merges(config_path: str) -> bool:
    """Whether export.formats asks for a merged model (Unsloth then merges, and must be imported first)."""
    import yaml

    try:
        formats = (yaml.safe_load(Path(config_path).read_text()) or {}).get("export", {}).get("formats", [])
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return bool(set(formats or []) - {"lora"})


def start(config_path: str, run_dir: str, stage: str) -> tuple[RunConfig, RunDir]:
    """Load the run config, open the run folder, quieten noise, and print what this stage will use."""
    if stage in ("train", "evaluate") or (stage == "export" and _merges(config_path)):
        from medqlora.training.model import preload_unsloth

        preload_unsloth()  # before anything below imports transformers
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    cap = os.environ.get("MEDQLORA_GPU_CAP_GB")  # act as a smaller card (e.g. 15 for a T4) on a big one
    if cap:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(float(cap) * 1024**3 / torch.cuda.mem_get_info()[1])
    cfg = load_config(config_path)
    run = RunDir(run_dir)
    progress_bars_to_log(run / "run.log")
    from medqlora.core.memory_log import record

    from medqlora.run.warm import STATE, preloaded_line

    ahead = preloaded_line(stage)
    record(run, stage, "start", kernel_pid=os.getpid(), **({"imports_done_ahead_s": STATE["seconds"]} if ahead else {}))
    print(f"stage {stage} | run {run.path.resolve()} | config {Path(config_path).resolve()}")
    if ahead:
        print(ahead)
    print(f"model {cfg.model.name_or_path}" + (f" ({cfg.model.gguf_file})" if cfg.model.gguf_file else "")
          + f" | backend {cfg.model.backend} | data {cfg.data.source}")
    return cfg, run


def kv_table(d: dict, name: str = "value"):
    """A dict (nested one level) as a two-column table; long values wrap instead of being cut at 50 characters;
    numbers formatted for reading (no '240.0'; sizes in B/KiB/MiB/GiB)."""
    import pandas as pd

    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    from medqlora.core.system import human_value

    df = pd.DataFrame({name: {k: human_value(k, v) for k, v in flat.items()}})
    return df.style.set_properties(**{"text-align": "left", "white-space": "pre-wrap"})


def text_table(rows: list[dict]):
    """Rows of text (answers, prompts) as a left-aligned table that wraps long text, in Jupyter and in HTML."""
    import pandas as pd

    return pd.DataFrame(rows).style.hide(axis="index").set_properties(
        **{"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top"})
