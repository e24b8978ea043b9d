"""Batches: runs in parallel, one per GPU (--gpus), and the batch summary with its comparison report."""
from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from medqlora.config import ConfigError
from medqlora.core.rundir import IN_CHECKOUT, PROJECT, STAGES, RunDir, read_json, write_json
from medqlora.core.system import clock
from medqlora.run.compare import compare_report
from medqlora.run.stages import EXIT_OK


FAIL_FAST_WHY = "--fail-fast stopped the batch after a failed run"  # why a run of a batch was never started


def exit_note(code: int | None) -> str:
    """What a child runner's exit code means: a negative one is the signal that killed it."""
    if code is None:
        return "not started (--fail-fast)"
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name}" + (": e.g. the kernel's out-of-memory killer)"
                                                        if -code == signal.SIGKILL else ")")
        except ValueError:
            name = ""
        return f"exit {code}: killed by signal {-code}{name}"
    return f"exit {code}"


def batch_failed(codes: list[int | None]) -> bool:
    """Any code but 0 is a failed run: 1 a stage failed, 2 invalid input, negative killed, None never started."""
    return any(c != EXIT_OK for c in codes)


def not_started_run(params_file: str) -> dict:
    """The comparison's record of a run --fail-fast never started and that has no folder: named by its params file."""
    import yaml

    try:
        model = ((yaml.safe_load(Path(params_file).read_text()) or {}).get("model") or {}).get("name_or_path")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        model = None
    return {"run": params_file, "path": None, "status": "not started", "rerun_of": None,
            "failed_stage": FAIL_FAST_WHY, "model": model, "data": None, "train_examples": None, "settings": {},
            "lora_r": None, "train_seconds": None, "tokens_per_s": None, "peak_gb": None, "final_loss": None,
            "val_loss": None, "sets": {}, "notebooks": [], "report": None, "tensorboard": None}


def batch_summary(folders: list[Path], reports: Path, codes: list[int | None], not_started: list[str] = ()) -> Path:
    """reports/batch-<time>/: batch.md and batch.json (each run's status) and the comparison report. A run whose
    runner did not exit 0 is failed whatever its summary.json says (a killed child never wrote its end); a code of
    None is a run never started. not_started: params files of runs --fail-fast never started and that have no
    folder (listed after the folders' runs)."""
    from medqlora.run.compare import load_runs, summary_md

    out = reports / f"batch-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(folders) + [not_started_run(f) for f in not_started]
    codes = list(codes) + [None] * len(not_started)
    for r, code in zip(runs, codes):
        if r["path"] is None:
            continue
        if code != EXIT_OK and r["status"] != "failed":
            r["status"] = "not started" if code is None else "failed"
            r["failed_stage"] = r["failed_stage"] or (FAIL_FAST_WHY if code is None else exit_note(code))
        elif code != EXIT_OK:
            r["failed_stage"] = f"{r['failed_stage']} ({exit_note(code)})"
    write_json(out / "batch.json", {"runs": [{"run": r["run"], "path": r["path"], "status": r["status"],
                                              "failed_stage": r["failed_stage"]} for r in runs],
                                    "exit_codes": codes})
    ok, never = sum(c == EXIT_OK for c in codes), sum(c is None for c in codes)
    text = (f"# Batch of {len(runs)} runs: {ok} succeeded, {len(codes) - ok - never} failed"
            + (f", {never} not started (--fail-fast)" if never else "") + "\n\n" + summary_md(runs))
    try:
        html = compare_report([str(f) for f in folders], out)
        text += f"\nComparison report: [{html.name}]({html.name})\n"
    except Exception as e:  # noqa: BLE001  (the runs' own results stand without it)
        text += f"\nThe comparison report could not be built: {type(e).__name__}: {e}\n"
    (out / "batch.md").write_text(text)
    print("\n" + text)
    return out


def gpu_ids(arg: str) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each child, one per card. --gpus counts among the cards the runner itself
    may use: with CUDA_VISIBLE_DEVICES=2,3 (SLURM, a shared host) '0,1' are cards 2 and 3 and 'all' is both, never
    cards 0 and 1 of someone else; without it, the indices are the machine's own."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = None if env is None else [g.strip() for g in env.split(",") if g.strip()]
    if visible is not None and (not visible or visible[0].startswith("-")):  # '' or '-1': CUDA hides every card
        raise ConfigError(f"--gpus {arg}: no card is visible to the runner (CUDA_VISIBLE_DEVICES={env!r}); unset it "
                          "or name the cards this job may use")
    if arg.strip() == "all":
        if visible is not None:
            return visible
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("--gpus all: no CUDA GPU is visible")
        return [str(i) for i in range(n)]
    ids = [g.strip() for g in arg.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ConfigError(f"--gpus {arg!r}: give GPU indices like 0,1 or 'all'")
    if len(set(map(int, ids))) < len(ids):
        raise ConfigError(f"--gpus {arg}: a card is given more than once; give each index once (one run per card)")
    if visible is None:
        return ids
    beyond = [g for g in ids if int(g) >= len(visible)]
    if beyond:
        raise ConfigError(f"--gpus {arg}: index {','.join(beyond)} is past the {len(visible)} cards this runner may "
                          f"use (CUDA_VISIBLE_DEVICES={env}); --gpus counts among them: give indices in "
                          f"{','.join(map(str, range(len(visible))))} or 'all'")
    return [visible[int(g)] for g in ids]


def run_on_gpus(jobs: list[tuple[str, list[str], Path]], gpus: list[str], tick=None,
                fail_fast: bool = False) -> dict[str, int]:
    """Run each job (name, command, log file) with CUDA_VISIBLE_DEVICES set to a free GPU, in order, at most one job
    per GPU at a time; tick(running, codes) is called every second with {gpu: name} and the exit codes so far.
    With fail_fast no job starts after one exited non-zero (those running finish); the jobs never started have no
    code."""
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
                if fail_fast and proc.returncode != 0 and queue:
                    print(f"--fail-fast: {name} failed ({exit_note(proc.returncode)}); {len(queue)} runs not "
                          "started", file=sys.stderr, flush=True)
                    queue.clear()
        if tick:
            tick({gpu: name for gpu, (name, _, _) in running.items()}, codes)
        if queue or running:
            time.sleep(1)
    return codes


def runner_command() -> list[str]:
    """runner.py in a checkout; the installed package's CLI module elsewhere."""
    return [str(PROJECT / "runner.py")] if IN_CHECKOUT else ["-c", "import sys; from medqlora.run.cli import main; "
                                                             "sys.exit(main())"]


def mark_killed(summary: Path, code: int | None) -> None:
    """A child that died without finishing (killed: negative code) left summary.json saying "running": say failed,
    and why, so that every report built from it (summary.md, the comparison) tells the truth."""
    if code is None or code == EXIT_OK or not summary.is_file():
        return
    data = read_json(summary)
    if data.get("status") == "running":
        data.update(status="failed", error=f"the runner ended without finishing ({exit_note(code)})",
                    finished=datetime.now().isoformat(timespec="seconds"))
        write_json(summary, data)


def child_argv(run_id: str, params_file: str, reports: Path, resume: bool, rerun: str | None, overrides: list[str],
               stages: str | None, verbose: bool) -> list[str]:
    """The child runner's arguments for one run of a --gpus batch: the same run as without --gpus (a --resume
    continues its own folder, a --rerun keeps what it repeats), under the given run id."""
    what = ["--resume", run_id] if resume else ["--rerun", rerun, "--run-id", run_id] if rerun else \
        [params_file, "--run-id", run_id]
    return [*what, "--reports-dir", str(reports), *[a for o in overrides for a in ("--set", o)],
            *(["--stages", stages] if stages else []), *(["--verbose"] if verbose else [])]


def run_parallel(children: list[tuple[str, list[str]]], gpus: list[str], reports: Path,
                 fail_fast: bool = False) -> list[int | None]:
    """One child runner per (run id, its arguments), on its own GPU (run_on_gpus); the terminal gets a combined line
    from the runs' summary.json files, each child's output its run folder. A run never started has None."""
    t0, last = time.time(), [""]
    run_ids = [r for r, _ in children]

    def tick(running: dict[str, str], codes: dict[str, int]) -> None:
        parts = []
        for gpu, run_id in sorted(running.items()):
            s = reports / run_id / "summary.json"
            done = len([x for x in (read_json(s).get("stages", []) if s.is_file() else []) if x["status"] == "ok"])
            n = len(RunDir(reports / run_id).stages()) if s.is_file() else len(STAGES)  # reinforce where it has rl:
            parts.append(f"gpu {gpu}: {run_id} stage {min(done + 1, n)}/{n}")
        line = f"[{len(codes)}/{len(run_ids)} runs done | " + " | ".join(parts) + f" | elapsed {clock(time.time() - t0)}]"
        if line.split("| elapsed")[0] != last[0]:
            print(line, flush=True)
            last[0] = line.split("| elapsed")[0]

    commands = [(run_id, [sys.executable, *runner_command(), *argv], reports / run_id / "terminal.log")
                for run_id, argv in children]
    codes = run_on_gpus(commands, gpus, tick, fail_fast=fail_fast)
    for run_id in run_ids:
        mark_killed(reports / run_id / "summary.json", codes.get(run_id))
        print(f"{run_id}: {exit_note(codes.get(run_id))} (output in {reports / run_id / 'terminal.log'})")
    return [codes.get(r) for r in run_ids]
