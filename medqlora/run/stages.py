"""One stage notebook executed with papermill, and what a --resume redoes (stale stages set aside, nothing lost)."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from medqlora.config import RunConfig, changed_keys, stage_inputs
from medqlora.core.rundir import NOTEBOOKS, STAGES, RunDir, kernel_cwd, notebook_dir
from medqlora.run.summary import Summary

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2  # runner.py's exit codes (README)


def notebook_kernel() -> str:
    return os.environ.get("MEDQLORA_KERNEL", "python3")


def run_stage(stage: str, run: RunDir, verbose: bool = False) -> tuple[str, float, str | None]:
    import papermill as pm

    t0 = time.time()
    try:
        with kernel_stderr_to(None if verbose else run / "run.log"):
            pm.execute_notebook(str(notebook_dir() / NOTEBOOKS[stage]), str(run / NOTEBOOKS[stage]),
                                parameters={"config_path": str(run.config_path), "run_dir": str(run.path)},
                                kernel_name=notebook_kernel(), cwd=str(kernel_cwd(run.path)),
                                log_output=True, progress_bar=False)
        return "ok", time.time() - t0, None
    except pm.PapermillExecutionError as e:
        return "failed", time.time() - t0, f"{e.ename}: {e.evalue}"
    except Exception as e:  # kernel died (out of memory), notebook missing, ...
        return "failed", time.time() - t0, f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def kernel_stderr_to(path: Path | None):
    """Send what the kernel process writes to stderr (its startup warnings, library chatter) to the run log:
    the kernel inherits file descriptor 2, so it is redirected at that level for the stage's duration."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def stale_stage(summary: Summary, cfg: RunConfig) -> tuple[str, list[str]] | None:
    """The first finished stage whose settings changed since it ran (its output is stale), and the changes."""
    for stage in STAGES:
        entry = summary.stage(stage)
        if entry and entry["status"] == "ok" and entry.get("inputs"):
            changes = changed_keys(entry["inputs"], stage_inputs(cfg, stage))
            if changes:
                return stage, changes
    return None


def set_aside(run: RunDir, summary: Summary, stages: list[str]) -> Path | None:
    """Move the results and notebooks of stages about to be redone into superseded/<time>/: nothing is lost,
    and nothing stale is read as this run's if a redone stage fails."""
    moved = [p for s in stages for p in (run.result_path(s), run / NOTEBOOKS[s]) if p.is_file()]
    if not moved:
        return None
    dest = run / "superseded" / datetime.now().strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in moved:
        os.replace(p, dest / (f"{p.stem}.result.json" if p.parent.name == "results" else p.name))
    summary.data["stages"] = [s for s in summary.data["stages"] if s["name"] not in stages]
    summary.collect()
    return dest
