"""One stage notebook executed with papermill, and what a --resume redoes (stale stages set aside, nothing lost)."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from medqlora.config import ConfigError, RunConfig, changed_keys, stage_inputs
from medqlora.core.rundir import NOTEBOOKS, STAGES, RunDir, kernel_cwd, notebook_dir, portable
from medqlora.run.summary import Summary

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2  # runner.py's exit codes (docs/running.md)


def notebook_kernel() -> str:
    return os.environ.get("MEDQLORA_KERNEL", "python3")


def run_stage(stage: str, run: RunDir, verbose: bool = False, warm=None) -> tuple[str, float, str | None]:
    """Execute one stage notebook; `warm` (warm.WarmKernel) is a kernel started for it ahead, used if its imports
    succeeded (the wait for them counts in the stage's seconds); the caller stops it afterwards (papermill stops
    only the kernels it started)."""
    import papermill as pm

    t0 = time.time()
    try:
        with kernel_stderr_to(None if verbose else run / "run.log"):
            km = warm.take() if warm is not None else None
            pm.execute_notebook(str(notebook_dir() / NOTEBOOKS[stage]), str(run / NOTEBOOKS[stage]),
                                parameters={"config_path": str(run.config_path), "run_dir": str(run.path)},
                                kernel_name=notebook_kernel(), cwd=str(kernel_cwd(run.path)),
                                log_output=True, progress_bar=False, **({"km": km} if km is not None else {}))
        return "ok", time.time() - t0, None
    except pm.PapermillExecutionError as e:
        return "failed", time.time() - t0, f"{e.ename}: {e.evalue}"
    except Exception as e:  # kernel died (out of memory), notebook missing, ...
        return "failed", time.time() - t0, f"{type(e).__name__}: {e}"


def imports_done_ahead(run: RunDir, stage: str) -> float | None:
    """The seconds of imports the stage's kernel did before the stage began, as its notebook recorded them."""
    from medqlora.core.memory_log import read_records

    starts = [r for r in read_records(run) if r["stage"] == stage and r["event"] == "start"]
    return starts[-1].get("imports_done_ahead_s") if starts else None


def start_warm(stage: str, stages: list[str], run: RunDir, verbose: bool = False, gguf_file: str | None = None):
    """At the start of `stage`: a kernel for a later stage that only warm.WARMED_WHILE stages precede (train, while
    setup and preprocess run), its imports under way; None where nothing is gained, where setup may change the
    packages it would import, with MEDQLORA_WARM_KERNEL=0, or if the kernel would not start."""
    from medqlora.run.warm import WARMED_WHILE, WarmKernel, may_start_during_setup

    target = WARMED_WHILE.get(stage)
    rest = stages[stages.index(stage) + 1:] if stage in stages else []
    if target not in rest or any(WARMED_WHILE.get(s) != target for s in rest[:rest.index(target)]):
        return None
    if os.environ.get("MEDQLORA_WARM_KERNEL", "1") == "0" or (stage == "setup" and not may_start_during_setup(gguf_file)):
        return None
    log = run / "run.log"

    def note(msg: str) -> None:
        with log.open("a") as f:
            f.write(msg + "\n")

    try:
        with kernel_stderr_to(None if verbose else log):
            return WarmKernel(target, stage, notebook_kernel(), str(kernel_cwd(run.path)), note)
    except Exception as e:  # noqa: BLE001 (the stage then starts its own kernel, as without a warm start)
        note(f"warm kernel for {target} not started ({type(e).__name__}: {e})")
        return None


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
            # both as the run folder records them (paths inside it relative): a restored run is not a changed one
            where = summary.run.path
            changes = changed_keys(portable(entry["inputs"], where), portable(stage_inputs(cfg, stage), where))
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


@dataclass
class ResumePlan:
    """What a --resume does: the stages it runs, and the earlier outputs it sets aside (all of them redone)."""
    first: str | None  # the first stage to run; None: nothing to resume
    run: list[str] = field(default_factory=list)
    stale: tuple[str, list[str]] | None = None  # the first stage whose settings changed, and the changes
    redo: list[str] = field(default_factory=list)  # stages with earlier outputs, set aside before they run again


def plan_resume(run: RunDir, summary: Summary, cfg: RunConfig, stages: list[str]) -> ResumePlan:
    """Decide, before anything is written or moved, where a --resume starts. Redoing a stage makes the outputs of
    every later stage that ran stale: each such stage must be in --stages, else the resume is refused (ConfigError,
    with the stages to add), so that no result is set aside for work that will not be done."""
    # A stage never run before one that succeeded was left out on purpose (--stages): not unfinished.
    last_ok = max((STAGES.index(s) for s in STAGES if summary.stage_status(s) == "ok"), default=-1)
    first = next((s for s in stages if summary.stage_status(s) != "ok"
                  and (summary.stage_status(s) is not None or STAGES.index(s) > last_ok)), None)
    stale = stale_stage(summary, cfg)
    if stale and (first is None or STAGES.index(stale[0]) < STAGES.index(first)):
        first = stale[0]
    if first is None:
        return ResumePlan(None, [], stale)
    later = [s for s in STAGES if STAGES.index(s) >= STAGES.index(first)]
    redo = [s for s in later if summary.stage(s) or run.result_path(s).is_file() or (run / NOTEBOOKS[s]).is_file()]
    missing = [s for s in redo if s not in stages]
    if missing:
        why = (f"settings changed since stage {first} ran ({'; '.join(stale[1])})" if stale and stale[0] == first
               else f"stage {first} runs again")
        need = [s for s in STAGES if s in stages or s in missing]
        raise ConfigError(f"--resume: {why}, so {', '.join(redo)} must be redone, but --stages leaves out "
                          f"{', '.join(missing)}: add {', '.join(missing)} to --stages (--stages {','.join(need)}) "
                          "or leave --stages out. Nothing was run or moved.")
    return ResumePlan(first, [s for s in stages if s in later], stale, redo)
