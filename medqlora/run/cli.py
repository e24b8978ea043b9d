"""The CLI: validate params, chain the stage notebooks with papermill, collect summary.json.

Exit codes: 0 every stage of every run succeeded; 2 invalid params or inputs (found before any notebook runs);
1 a stage failed (its executed notebook is kept with the error, and summary.json says which and why).

    python runner.py [PARAMS ...]            one run per params file, folder of YAML files, or glob
    python runner.py compare RUN_DIR ...     the comparison report for any finished (or failed) runs
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import re
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

from medqlora.config import ConfigError, RunConfig, changed_keys, check_inputs, load_config, save_config, stage_inputs
from medqlora.core.rundir import NOTEBOOKS, PROJECT, STAGES, RunDir, notebook_dir, read_json, write_json
from medqlora.core.system import clock

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="runner.py", description="Run the medqlora notebook chain (setup, preprocess, train, export, "
        "evaluate) for one or more params files; executed notebooks and summary.json go to reports/<run_id>/.")
    p.add_argument("params", nargs="*", help="params YAML files, folders of them or globs, one run each "
                   "(default: params/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, value read as YAML (repeatable): --set train.epochs=2")
    p.add_argument("--run-id", help="name of the run folder (default: <run_name>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--reports-dir", default=str(PROJECT / "reports"),
                   help="where run folders go (default: reports/ in the project)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its first unfinished stage")
    p.add_argument("--check", action="store_true", help="validate and print the resolved config, run nothing")
    p.add_argument("--fail-fast", action="store_true", help="stop the batch at the first failed run")
    p.add_argument("--verbose", action="store_true", help="show every notebook output line (the full log is always "
                   "in each run folder's run.log)")
    p.add_argument("--rerun", metavar="RUN_DIR", help="start a new run from a finished run's own config.yaml "
                   "(resolved settings, seeds, data paths); the comparison shows both")
    p.add_argument("--gpus", help="run the batch's runs in parallel, one per GPU: '0,1' or 'all' (queued when runs "
                   "outnumber GPUs)")
    p.add_argument("--prepare-only", action="store_true",
                   help="write each run's notebooks with their parameters injected, plus a driver notebook that runs "
                   "the whole chain, to --reports-dir (a folder or gs://...): for Colab Enterprise; nothing executes")
    return p.parse_args(argv)


def expand_params(items: list[str]) -> list[str]:
    """Params files from files, folders (their *.yaml, sorted) and glob patterns, in the order given."""
    out = []
    for item in items:
        if Path(item).is_dir():
            found = sorted(str(p) for p in Path(item).glob("*.y*ml"))
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
        else:
            found = [item]
        if not found:
            raise ConfigError(f"{item}: no params files there")
        out += found
    return out


# ---------------------------------------------------------------- what the terminal shows

# Notebook output lines worth a terminal: progress with ETA, stage banners, problems. Everything is in run.log.
PROGRESS = re.compile(r"ETA|answered|^==|error|Error|Traceback|warning:|note:|refus|out of memory|OOM|verified")


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


def _stages(arg: str | None) -> list[str]:
    if not arg:
        return list(STAGES)
    chosen = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [s for s in chosen if s not in STAGES]
    if bad:
        raise ConfigError(f"--stages: unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    return [s for s in STAGES if s in chosen]  # always in pipeline order


def validated(path: Path, overrides: list[str]) -> RunConfig:
    cfg = load_config(path, overrides)
    problems = check_inputs(cfg)
    if not problems:  # the data check at the door: the first rows of each file, read as the stage will
        from medqlora.data.check import preflight

        problems = preflight(cfg.data, cfg.eval.sets)
    if not problems:
        from medqlora.training.memory import preflight as memory_preflight

        problems = memory_preflight(cfg)
    if problems:
        raise ConfigError(f"invalid inputs in {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg


class Summary:
    """summary.json, rewritten after every stage so that a crashed run still says how far it got."""

    def __init__(self, run: RunDir, run_id: str, cfg: RunConfig, params_file: str):
        self.run, self.path = run, run / "summary.json"
        old = read_json(self.path) if self.path.is_file() else {}
        self.data = {"run_id": run_id, "status": "running", "params_file": params_file,
                     "model": cfg.model.name_or_path + (f" ({cfg.model.gguf_file})" if cfg.model.gguf_file else ""),
                     "run_dir": str(run.path), "started": old.get("started") or datetime.now().isoformat(timespec="seconds"),
                     "stages": old.get("stages", []), "data": None, "train": None, "metrics": None,
                     "artifacts": {"adapter_dir": None}, "error": None,
                     "rerun_of": old.get("rerun_of"), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def stage(self, name: str) -> dict | None:
        return next((s for s in self.data["stages"] if s["name"] == name), None)

    def stage_status(self, name: str) -> str | None:
        return (self.stage(name) or {}).get("status")

    def record(self, name: str, status: str, seconds: float, notebook: Path, error: str | None = None,
               inputs: dict | None = None):
        self.data["stages"] = [s for s in self.data["stages"] if s["name"] != name]
        self.data["stages"].append({"name": name, "status": status, "seconds": round(seconds, 1),
                                    "notebook": str(notebook), "error": error, "inputs": inputs})
        self.data["stages"].sort(key=lambda s: STAGES.index(s["name"]))
        self.collect()
        self.save()

    def collect(self):
        run = self.run
        self.data["train"] = self.data["metrics"] = None
        self.data["artifacts"] = {"adapter_dir": None}
        self.data["data"] = None
        if run.result_path("preprocess").is_file():
            p = read_json(run.result_path("preprocess"))
            self.data["data"] = {k: p.get(k) for k in ("format", "rows_read", "kept", "dropped", "max_seq_length")}
        if run.result_path("train").is_file():
            t = read_json(run.result_path("train"))
            self.data["train"] = {k: t.get(k) for k in ("backend", "steps", "epochs", "first_loss", "final_loss",
                                                         "train_loss", "seconds", "seconds_per_step",
                                                         "warmup_steps", "peak_memory_gb")}
            self.data["train"]["effective_settings"] = t.get("effective_settings")
            self.data["train"]["memory_plan_steps"] = ((t.get("memory") or {}).get("plan") or {}).get("steps")
            self.data["train"]["oom_retries"] = (t.get("memory") or {}).get("oom_retries")
        from medqlora.core.memory_log import peaks_by_stage

        self.data["memory_peaks_gb"] = peaks_by_stage(run)
        if run.result_path("export").is_file():
            e = read_json(run.result_path("export"))
            self.data["artifacts"] = {"adapter_dir": e["adapter_dir"], "export_dir": e["export_dir"]}
        if run.result_path("evaluate").is_file():
            self.data["metrics"] = read_json(run.result_path("evaluate"))["metrics"]

    def finish(self, status: str, error: str | None = None):
        self.data.update(status=status, error=error, finished=datetime.now().isoformat(timespec="seconds"))
        self.save()

    def save(self):
        write_json(self.path, self.data)
        (self.run / "summary.md").write_text(readable(self.data))


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def readable(s: dict) -> str:
    lines = [f"# {s['run_id']}: {s['status']}", "", f"model: {s['model']}", ""]
    lines += ["| stage | status | seconds | notebook |", "|---|---|---|---|"]
    lines += [f"| {x['name']} | {x['status']} | {x['seconds']} | {Path(x['notebook']).name} |" for x in s["stages"]]
    if s.get("data"):
        d = s["data"]
        dropped = ", ".join(f"{k} {v}" for k, v in (d["dropped"] or {}).items()) or "none"
        lines += ["", f"data ({d['format']}): {d['rows_read']} rows read, kept {d['kept']}, dropped: {dropped}"]
    if s.get("train"):
        t = s["train"]
        lines += ["", f"training ({t['backend']}): {t['steps']} steps, loss {_num(t['first_loss'])} -> "
                  f"{_num(t['final_loss'])}, {t['seconds']} s, peak memory {t['peak_memory_gb']} GiB"]
    if s.get("metrics"):
        lines += ["", "| metric | base | fine-tuned |", "|---|---|---|"]
        for k in ("rouge1", "rouge2", "rougeL", "accuracy", "parse_rate", "looping", "hit_token_limit", "n_freetext",
                  "n_choice"):
            lines.append(f"| {k} | {_num(s['metrics']['base'].get(k))} | {_num(s['metrics']['finetuned'].get(k))} |")
    if s.get("error"):
        lines += ["", f"error: {s['error']}"]
    lines += ["", "All five notebooks in one file: [report.html](report.html); full log: run.log"]
    return "\n".join(lines) + "\n"


def notebook_kernel() -> str:
    return os.environ.get("MEDQLORA_KERNEL", "python3")


def run_stage(stage: str, run: RunDir, verbose: bool = False) -> tuple[str, float, str | None]:
    import papermill as pm

    t0 = time.time()
    try:
        with kernel_stderr_to(None if verbose else run / "run.log"):
            pm.execute_notebook(str(notebook_dir() / NOTEBOOKS[stage]), str(run / NOTEBOOKS[stage]),
                                parameters={"config_path": str(run.config_path), "run_dir": str(run.path)},
                                kernel_name=notebook_kernel(), cwd=str(PROJECT),
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


def execute(cfg: RunConfig, run: RunDir, run_id: str, stages: list[str], params_file: str, resume: bool,
            progress: Progress | None = None, run_i: int = 1) -> int:
    handler = run_log(run)
    logging.getLogger().addHandler(handler)
    try:
        return _execute(cfg, run, run_id, stages, params_file, resume, progress or Progress(1), run_i)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        write_report(run)


def write_report(run: RunDir) -> None:
    """report.html: the run's executed notebooks in one file (a failure here never fails the run)."""
    from medqlora.run.report import run_report

    try:
        run_report(run)
    except Exception as e:  # noqa: BLE001
        print(f"note: could not write {run / 'report.html'}: {type(e).__name__}: {e}", file=sys.stderr)


def _execute(cfg: RunConfig, run: RunDir, run_id: str, stages: list[str], params_file: str, resume: bool,
             progress: Progress, run_i: int) -> int:
    summary = Summary(run, run_id, cfg, params_file)
    if resume:
        # A stage never run before one that succeeded was left out on purpose (--stages): not unfinished.
        ok = [STAGES.index(s) for s in STAGES if summary.stage_status(s) == "ok"]
        last_ok = max(ok, default=-1)
        first = next((s for s in stages if summary.stage_status(s) != "ok"
                      and (summary.stage_status(s) is not None or STAGES.index(s) > last_ok)), None)
        stale = stale_stage(summary, cfg)
        if stale and (first is None or STAGES.index(stale[0]) < STAGES.index(first)):
            first = stale[0]
            print(f"{run_id}: settings changed since stage {first} ran ({'; '.join(stale[1])}): "
                  f"redoing {first} and every stage after it")
        if first is None:
            print(f"{run_id}: every stage already succeeded with these settings; nothing to resume")
            summary.collect()
            summary.finish("ok")
            return EXIT_OK
        stages = [s for s in stages if STAGES.index(s) >= STAGES.index(first)]
        aside = set_aside(run, summary, [s for s in STAGES if STAGES.index(s) >= STAGES.index(first)])
        print(f"{run_id}: resuming at stage {first}" + (f" (earlier outputs of redone stages in {aside})" if aside else ""))
    summary.save()
    for j, stage in enumerate(stages, start=1):
        print(f"\n{progress.line(run_i, run_id, j, stage, stages)}\n=== {run_id}: {stage} -> "
              f"{run / NOTEBOOKS[stage]}", flush=True)
        status, seconds, error = run_stage(stage, run, progress.verbose)
        progress.record(stage, seconds)
        summary.record(stage, status, seconds, run / NOTEBOOKS[stage], error,
                       stage_inputs(cfg, stage) if status == "ok" else None)
        print(f"=== {stage}: {status} in {seconds:.1f} s" + (f": {error}" if error else ""), flush=True)
        if status != "ok":
            summary.finish("failed", f"stage {stage} failed: {error}")
            print(f"\n{run_id}: stage {stage} failed; the executed notebook with the error is "
                  f"{run / NOTEBOOKS[stage]}.\nFix the cause, then: python runner.py --resume {run_id}"
                  + (f" --reports-dir {run.path.parent}" if run.path.parent != PROJECT / "reports" else ""),
                  file=sys.stderr)
            return EXIT_FAILED
    summary.finish("ok" if all(summary.stage_status(s) == "ok" for s in STAGES) else "partial")
    print(f"\n{run_id}: {summary.data['status']}\n" + readable(summary.data))
    return EXIT_OK


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="runner.py compare", description="Comparison report (notebook + HTML) for "
                                "run folders: one row per run, every metric with intervals.")
    p.add_argument("runs", nargs="+", help="run folders (reports/<run_id>)")
    p.add_argument("--out", help="folder for compare.ipynb / compare.html (default: reports/compare-<time>)")
    a = p.parse_args(argv)
    missing = [r for r in a.runs if not (Path(r) / "config.yaml").is_file()]
    if missing:
        print(f"error: not run folders (no config.yaml): {missing}", file=sys.stderr)
        return EXIT_INVALID
    out = Path(a.out or PROJECT / "reports" / f"compare-{datetime.now():%Y%m%d-%H%M%S}")
    print(f"comparison report: {compare_report([str(Path(r).resolve()) for r in a.runs], out)}")
    return EXIT_OK


def compare_report(run_dirs: list[str], out: Path) -> Path:
    """Execute notebooks/compare.ipynb for these runs into out/, with its HTML export beside it."""
    import papermill as pm

    from medqlora.run.report import notebook_html

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    nb = out / "compare.ipynb"
    with kernel_stderr_to(out / "compare.log"):
        pm.execute_notebook(str(notebook_dir() / "compare.ipynb"), str(nb), cwd=str(PROJECT), progress_bar=False,
                            parameters={"run_dirs": run_dirs, "out_dir": str(out)},
                            kernel_name=notebook_kernel())
    return notebook_html(nb)


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


def write_environment(run: RunDir, params_file: str, argv: list[str], rerun_of: str | None) -> None:
    """environment.json: what it takes to rerun this run exactly (with config.yaml beside it: every setting,
    seeds included, as resolved; the data fingerprint is in results/preprocess.json)."""
    import platform

    from medqlora.export.exporter import git_commit
    from medqlora.core.system import versions

    write_json(run / "environment.json", {
        "command": [sys.executable, "runner.py", *argv], "params_file": params_file, "rerun_of": rerun_of,
        "git_commit": git_commit(), "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": versions(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": datetime.now().isoformat(timespec="seconds")})


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

    commands = [(run_id, [sys.executable, str(PROJECT / "runner.py"), f, "--run-id", run_id, "--reports-dir",
                          str(reports), *argv_common], reports / run_id / "terminal.log")
                for run_id, (_, f) in zip(run_ids, jobs)]
    codes = run_on_gpus(commands, gpus, tick)
    for run_id in run_ids:
        print(f"{run_id}: exit {codes[run_id]} (output in {reports / run_id / 'terminal.log'})")
    return [codes[r] for r in run_ids]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if not args.verbose:
        for h in logging.getLogger().handlers:
            h.addFilter(QuietNotebookOutput())
    for noisy in ("papermill.translators", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # nbconvert's notes on the HTML export (alt text)
    # bitsandbytes asks for the hub-hosted 'kernels' CPU gemm, which offline machines cannot fetch; it falls back.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Notes from validation (a renamed key, an eval set replaced) read as notes, not as Python warnings
    warnings.showwarning = lambda message, *a, **k: print(f"note: {message}", file=sys.stderr)
    remote = "://" in args.reports_dir
    if remote and not args.prepare_only:
        print("error: a gs:// (or other URL) --reports-dir is for --prepare-only; a local run writes to a folder "
              "(the Colab Enterprise driver notebook copies its run folder to gs:// itself)", file=sys.stderr)
        return EXIT_INVALID
    reports = args.reports_dir if remote else Path(args.reports_dir).resolve()  # papermill runs in the project
    try:
        stages = _stages(args.stages)
        if args.resume:
            if args.params:
                raise ConfigError("--resume takes the run's own config.yaml; give no params files with it")
            run_path = reports / args.resume
            if not (run_path / "config.yaml").is_file():
                raise ConfigError(f"--resume {args.resume}: no run folder with config.yaml at {run_path}")
            jobs = [(validated(run_path / "config.yaml", args.overrides), str(run_path / "config.yaml"))]
        elif args.rerun:
            if args.params:
                raise ConfigError("--rerun takes the earlier run's own config.yaml; give no params files with it")
            if not (Path(args.rerun) / "config.yaml").is_file():
                raise ConfigError(f"--rerun {args.rerun}: no run folder with config.yaml there")
            jobs = [(validated(Path(args.rerun) / "config.yaml", args.overrides), str(Path(args.rerun) / "config.yaml"))]
        else:
            files = expand_params(args.params) if args.params else [str(PROJECT / "params" / "default.yaml")]
            if args.run_id and len(files) > 1:
                raise ConfigError("--run-id names one run; give one params file with it")
            jobs = [(validated(Path(f), args.overrides), f) for f in files]  # all validated before any runs
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.check:
        import yaml

        for cfg, f in jobs:
            print(f"# {f}: valid\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return EXIT_OK
    if args.prepare_only:
        from medqlora.run.colab import prepare

        for cfg, f in jobs:
            run_id = args.run_id or f"{cfg.run_name}-{datetime.now():%Y%m%d-%H%M%S}"
            try:
                print(f"prepared {f}: {prepare(cfg, run_id, str(reports), stages)}")
            except FileExistsError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_INVALID
        return EXIT_OK
    if args.gpus:
        try:
            gpus = gpu_ids(args.gpus)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_INVALID
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        run_ids = [f"{cfg.run_name}-{stamp}-{i}" for i, (cfg, _) in enumerate(jobs, start=1)]
        common = [a for o in args.overrides for a in ("--set", o)] + (["--stages", args.stages] if args.stages else [])
        codes = run_parallel(jobs, gpus, reports, common, run_ids)
        if len(jobs) > 1:
            batch_summary([reports / r for r in run_ids], reports, codes)
        return max(codes)
    progress = Progress(len(jobs), args.verbose)
    codes, folders = [], []
    for i, (cfg, f) in enumerate(jobs, start=1):
        run_id = args.resume or args.run_id or f"{cfg.run_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_path = reports / run_id
        if not args.resume and (run_path / "summary.json").exists():
            print(f"error: run folder {run_path} already exists; use --resume {run_id} or another --run-id",
                  file=sys.stderr)
            return EXIT_INVALID
        run = RunDir(run_path)
        save_config(cfg, run.config_path)
        rerun_of = str(Path(args.rerun).resolve()) if args.rerun else None
        if not args.resume:
            write_environment(run, f, argv, rerun_of)
            if rerun_of:
                write_json(run / "summary.json", {"run_id": run_id, "rerun_of": rerun_of, "stages": []})
        codes.append(execute(cfg, run, run_id, stages, f, bool(args.resume), progress, i))
        folders.append(run_path)
        if codes[-1] != EXIT_OK and args.fail_fast and i < len(jobs):
            print(f"--fail-fast: stopping the batch after {run_id} failed ({len(jobs) - i} runs not started)",
                  file=sys.stderr)
            break
    if len(jobs) > 1:
        batch_summary(folders, reports, codes)
    return max(codes) if len(codes) == len(jobs) else EXIT_FAILED
