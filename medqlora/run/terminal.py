"""What the terminal shows of a run: progress lines with an ETA; everything else goes to run.log."""
from __future__ import annotations

import logging
import re
import time

from medqlora.core.rundir import STAGES, RunDir
from medqlora.core.system import clock

# Notebook output lines worth a terminal: progress with ETA, stage banners, problems. Everything is in run.log.
# (the evaluate notebook prints its warnings as 'WARNING <line>')
PROGRESS = re.compile(r"ETA|answered|validation loss|^training loss|^==|error|Error|Traceback|warning:|^\s*WARNING "
                      r"|note:|refus|out of memory|OOM|verified")


class QuietNotebookOutput(logging.Filter):
    """Keep only progress lines of papermill's notebook output (and none of its 'Executing Cell' chatter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("papermill"):
            return True
        lines = [ln for ln in record.getMessage().splitlines() if PROGRESS.search(ln) and "Executing" not in ln
                 and "Ending Cell" not in ln]
        if not lines:
            return False
        record.msg, record.args = "\n".join("    " + ln.strip() for ln in lines), ()
        return True


class Progress:
    """The batch's one-line position: run i of n, stage j of 5, elapsed, and an ETA from each stage's mean duration
    in the runs finished so far (stages differ by minutes, so none is guessed before one run has finished)."""

    def __init__(self, n_runs: int, verbose: bool = False):
        self.n_runs, self.verbose, self.t0 = n_runs, verbose, time.time()
        self.seconds: dict[str, list[float]] = {}

    def record(self, stage: str, seconds: float) -> None:
        self.seconds.setdefault(stage, []).append(seconds)

    def line(self, run_i: int, run_id: str, stage_j: int, stage: str, stages: list[str] | None = None) -> str:
        stages = stages or STAGES
        left = stages[stage_j - 1:]
        if all(self.seconds.get(s) for s in stages):
            mean = {s: sum(v) / len(v) for s, v in self.seconds.items()}
            eta = clock(sum(mean[s] for s in left) + (self.n_runs - run_i) * sum(mean[s] for s in stages))
        else:
            eta = "after the first run" if self.n_runs > 1 else "see the stage's own progress"
        return (f"[run {run_i}/{self.n_runs} {run_id} | stage {stage_j}/{len(stages)} {stage} | elapsed "
                f"{clock(time.time() - self.t0)} | ETA {eta}]")


def run_log(run: RunDir) -> logging.Handler:
    """Everything the notebooks print, kept in the run folder."""
    h = logging.FileHandler(run / "run.log", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(message)s"))
    return h
