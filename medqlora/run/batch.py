"""Batches: runs in parallel, one per GPU (--gpus), and the batch summary with its comparison report."""
from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path

from medqlora.config import ConfigError, RunConfig
from medqlora.core.rundir import IN_CHECKOUT, PROJECT, STAGES, read_json, write_json
from medqlora.core.system import clock
from medqlora.run.compare import compare_report
from medqlora.run.stages import EXIT_OK


def batch_summary(folders: list[Path], reports: Path, codes: list[int]) -> Path:
    """reports/batch-<time>/: batch.md and batch.json (each run's status) and the comparison report."""
    from medqlora.run.compare import load_runs, summary_md

    out = reports / f"batch-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(folders)
    write_json(out / "batch.json", {"runs": [{"run": r["run"], "path": r["path"], "status": r["status"],
                                              "failed_stage": r["failed_stage"]} for r in runs],
                                    "exit_codes": codes})
    text = f"# Batch of {len(runs)} runs: {sum(c == EXIT_OK for c in codes)} succeeded\n\n" + summary_md(runs)
    try:
        html = compare_report([str(f) for f in folders], out)
        text += f"\nComparison report: [{html.name}]({html.name})\n"
    except Exception as e:  # noqa: BLE001  (the runs' own results stand without it)
        text += f"\nThe comparison report could not be built: {type(e).__name__}: {e}\n"
    (out / "batch.md").write_text(text)
    print("\n" + text)
    return out


def gpu_ids(arg: str) -> list[str]:
    if arg.strip() == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("--gpus all: no CUDA GPU is visible")
        return [str(i) for i in range(n)]
    ids = [g.strip() for g in arg.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ConfigError(f"--gpus {arg!r}: give GPU indices like 0,1 or 'all'")
    return ids


def run_on_gpus(jobs: list[tuple[str, list[str], Path]], gpus: list[str], tick=None) -> dict[str, int]:
    """Run each job (name, command, log file) with CUDA_VISIBLE_DEVICES set to a free GPU, in order, at most one job
    per GPU at a time; tick(running, codes) is called every second with {gpu: name} and the exit codes so far."""
    import subprocess

    queue = list(jobs)
    running: dict[str, tuple] = {}
    codes: dict[str, int] = {}
    while queue or running:
        for gpu in gpus:
            if gpu not in running and queue:
                name, command, log_path = queue.pop(0)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = open(log_path, "w")
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu})
                running[gpu] = (name, proc, log)
        for gpu, (name, proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                codes[name] = proc.returncode
                del running[gpu]
        if tick:
            tick({gpu: name for gpu, (name, _, _) in running.items()}, codes)
        time.sleep(1)
    return codes


def runner_command() -> list[str]:
    """runner.py in a checkout; the installed package's CLI module elsewhere."""
    return [str(PROJECT / "runner.py")] if IN_CHECKOUT else ["-c", "import sys; from medqlora.run.cli import main; "
                                                             "sys.exit(main())"]


def run_parallel(jobs: list[tuple[RunConfig, str]], gpus: list[str], reports: Path, argv_common: list[str],
                 run_ids: list[str]) -> list[int]:
    """One child runner per run, on its own GPU (run_on_gpus); the terminal gets a combined line from the runs'
    summary.json files, each child's output its run folder."""
    t0, last = time.time(), [""]

    def tick(running: dict[str, str], codes: dict[str, int]) -> None:
        parts = []
        for gpu, run_id in sorted(running.items()):
            s = reports / run_id / "summary.json"
            done = len([x for x in (read_json(s).get("stages", []) if s.is_file() else []) if x["status"] == "ok"])
            parts.append(f"gpu {gpu}: {run_id} stage {min(done + 1, len(STAGES))}/{len(STAGES)}")
        line = f"[{len(codes)}/{len(run_ids)} runs done | " + " | ".join(parts) + f" | elapsed {clock(time.time() - t0)}]"
        if line.split("| elapsed")[0] != last[0]:
            print(line, flush=True)
            last[0] = line.split("| elapsed")[0]

    commands = [(run_id, [sys.executable, *runner_command(), f, "--run-id", run_id, "--reports-dir",
                          str(reports), *argv_common], reports / run_id / "terminal.log")
                for run_id, (_, f) in zip(run_ids, jobs)]
    codes = run_on_gpus(commands, gpus, tick)
    for run_id in run_ids:
        print(f"{run_id}: exit {codes[run_id]} (output in {reports / run_id / 'terminal.log'})")
    return [codes[r] for r in run_ids]
