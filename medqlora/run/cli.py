"""The CLI: validate params, chain the stage notebooks with papermill, collect summary.json.

Exit codes: 0 every stage of every run succeeded; 2 invalid params or inputs (found before any notebook runs);
1 a stage failed (its executed notebook is kept with the error, and summary.json says which and why).

    python runner.py [PARAMS ...]            one run per params file, folder of YAML files, or glob
    python runner.py compare RUN_DIR ...     the comparison report for any finished (or failed) runs
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path

from medqlora.config import (
    ConfigError,
    RunConfig,
    check_inputs,
    load_config,
    save_config,
    stage_inputs,
)
from medqlora.core.rundir import (IN_CHECKOUT, NOTEBOOKS, PROJECT, STAGES, RunDir, default_reports, run_stages,
                                  write_json)
from medqlora.run.batch import batch_failed, batch_summary, child_argv, gpu_ids, run_parallel
from medqlora.run.compare import compare_main
from medqlora.run.stages import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    ResumePlan,
    imports_done_ahead,
    plan_resume,
    run_stage,
    set_aside,
    start_warm,
)
from medqlora.run.summary import Summary, readable
from medqlora.run.terminal import Progress, QuietNotebookOutput, run_log


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="runner.py", description="Run the medqlora notebook chain (setup, preprocess, train, export, "
        "evaluate) for one or more params files; executed notebooks and summary.json go to reports/<run_id>/.")
    p.add_argument("params", nargs="*", help="params YAML files, folders of them or globs, one run each "
                   "(default: params/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, value read as YAML (repeatable): --set train.epochs=2; a path "
                   "(data.source, data.eval_source, model.name_or_path, model.cache_dir, export.destination) is "
                   "taken as written")
    p.add_argument("--run-id", help="name of the run folder (default: <run_name>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--reports-dir", default=str(default_reports()),
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
                   help="for Colab Enterprise: write each run's folder to --reports-dir (gs://... or a folder): config, "
                   "its local inputs, a medqlora wheel and a driver notebook that runs or resumes the chain; nothing "
                   "executes (docs/colab-enterprise.md)")
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


def _stages(arg: str | None) -> list[str]:
    if not arg:
        return list(STAGES)
    chosen = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [s for s in chosen if s not in STAGES]
    if bad:
        raise ConfigError(f"--stages: unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    return [s for s in STAGES if s in chosen]  # always in pipeline order


def for_run(cfg: RunConfig, stages: list[str]) -> list[str]:
    """The asked stages this run has: reinforce only where its params have an rl: section."""
    return [s for s in stages if s in run_stages(cfg)]


def check_stages_for(jobs: list[tuple[RunConfig, str]], stages: list[str], explicit: bool) -> None:
    """--stages naming reinforce for params without rl: a note where other stages remain, an error where none does."""
    for cfg, f in jobs:
        if explicit and "reinforce" in stages and cfg.rl is None:
            if not for_run(cfg, stages):
                raise ConfigError(f"--stages reinforce: {f} has no rl: section, so its run has no reinforce stage; "
                                  "add an rl: section (README 'Params reference') or choose other stages")
            print(f"note: {f} has no rl: section: its run skips the reinforce stage", file=sys.stderr)


def validated(path: Path, overrides: list[str]) -> RunConfig:
    cfg = load_config(path, overrides)
    problems = check_inputs(cfg)
    if not problems:  # the data check at the door: every row of each file, read as the stage will
        from medqlora.data.check import preflight

        problems = preflight(cfg.data, cfg.eval.sets)
    if not problems:
        from medqlora.training.memory_plan import preflight as memory_preflight

        problems = memory_preflight(cfg)
    if not problems and cfg.rl is not None:  # the reinforce stage's inputs, and GRPO's memory
        from medqlora.reinforce.checks import problems as rl_problems

        problems = rl_problems(cfg)
    if problems:
        raise ConfigError(f"invalid inputs in {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg


def execute(cfg: RunConfig, run: RunDir, run_id: str, stages: list[str], params_file: str, resume: ResumePlan | None,
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


def _execute(cfg: RunConfig, run: RunDir, run_id: str, stages: list[str], params_file: str, resume: ResumePlan | None,
             progress: Progress, run_i: int) -> int:
    stages = for_run(cfg, stages)
    summary = Summary(run, run_id, cfg, params_file)
    if resume is not None:
        if resume.stale and resume.stale[0] == resume.first:
            print(f"{run_id}: settings changed since stage {resume.first} ran ({'; '.join(resume.stale[1])}): "
                  f"redoing {', '.join(resume.run)}")
        if resume.first is None:
            summary.collect()
            status = summary.finish()  # what the stages say, whichever --stages were asked for
            print(f"{run_id}: every stage in --stages already succeeded with these settings; nothing to resume. "
                  f"The run is {status}" + (f" ({summary.data['error']})" if status == "failed" else "") + ".")
            return EXIT_FAILED if status == "failed" else EXIT_OK
        stages = resume.run
        aside = set_aside(run, summary, resume.redo)
        print(f"{run_id}: resuming at stage {resume.first}"
              + (f" (earlier outputs of redone stages in {aside})" if aside else ""))
    summary.save()
    warm: dict = {}  # stage -> a kernel started ahead for it (stages.start_warm)
    try:
        return _run_stages(cfg, run, run_id, stages, progress, run_i, summary, warm)
    finally:
        for kernel in warm.values():  # started, never used: the run stopped before its stage
            kernel.shutdown()


def _run_stages(cfg, run, run_id, stages, progress, run_i, summary, warm: dict) -> int:
    for j, stage in enumerate(stages, start=1):
        print(f"\n{progress.line(run_i, run_id, j, stage, stages)}\n=== {run_id}: {stage} -> "
              f"{run / NOTEBOOKS[stage]}", flush=True)
        mine = warm.pop(stage, None)
        if not warm:  # at most one kernel ahead, started as early as is safe
            ahead = start_warm(stage, stages, run, progress.verbose, cfg.model.gguf_file)
            if ahead is not None:
                warm[ahead.stage] = ahead
        try:
            status, seconds, error = run_stage(stage, run, progress.verbose, mine)
        finally:
            if mine is not None:
                mine.shutdown()
        progress.record(stage, seconds)
        ahead_s = imports_done_ahead(run, stage) if mine is not None else None
        summary.record(stage, status, seconds, run / NOTEBOOKS[stage], error,
                       stage_inputs(cfg, stage) if status == "ok" else None, ahead_s)
        print(f"=== {stage}: {status} in {seconds:.1f} s" + (f" (its imports, {ahead_s} s, done ahead)" if ahead_s
              else "") + (f": {error}" if error else ""), flush=True)
        if status != "ok":
            summary.finish(f"stage {stage} failed: {error}")
            print(f"\n{run_id}: stage {stage} failed; the executed notebook with the error is "
                  f"{run / NOTEBOOKS[stage]}.\nFix the cause, then: python runner.py --resume {run_id}"
                  + (f" --reports-dir {run.path.parent}" if run.path.parent != default_reports() else ""),
                  file=sys.stderr)
            return EXIT_FAILED
    status = summary.finish()
    print(f"\n{run_id}: {status}\n" + readable(summary.data, run))
    return EXIT_FAILED if status == "failed" else EXIT_OK


def write_environment(run: RunDir, params_file: str, argv: list[str], rerun_of: str | None) -> None:
    """environment.json: what it takes to rerun this run exactly (with config.yaml beside it: every setting,
    seeds included, as resolved; the data fingerprint is in results/preprocess.json)."""
    import platform

    from medqlora.core.system import versions
    from medqlora.export.exporter import git_commit

    write_json(run / "environment.json", {
        "command": [sys.executable, "runner.py", *argv], "params_file": params_file, "rerun_of": rerun_of,
        "git_commit": git_commit(), "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": versions(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": datetime.now().isoformat(timespec="seconds")})


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
    resume_plan = None
    try:
        stages = _stages(args.stages)
        if args.resume:
            if args.params:
                raise ConfigError("--resume takes the run's own config.yaml; give no params files with it")
            run_path = reports / args.resume
            if not (run_path / "config.yaml").is_file():
                raise ConfigError(f"--resume {args.resume}: no run folder with config.yaml at {run_path}")
            jobs = [(validated(run_path / "config.yaml", args.overrides), str(run_path / "config.yaml"))]
            # where it starts, decided before anything is written: a refusal leaves the run as it was
            cfg, old = jobs[0][0], RunDir(run_path)
            resume_plan = plan_resume(old, Summary(old, args.resume, cfg, jobs[0][1]), cfg, for_run(cfg, stages))
        elif args.rerun:
            if args.params:
                raise ConfigError("--rerun takes the earlier run's own config.yaml; give no params files with it")
            if not (Path(args.rerun) / "config.yaml").is_file():
                raise ConfigError(f"--rerun {args.rerun}: no run folder with config.yaml there")
            jobs = [(validated(Path(args.rerun) / "config.yaml", args.overrides), str(Path(args.rerun) / "config.yaml"))]
        else:
            if not args.params and not IN_CHECKOUT:
                raise ConfigError("give a params file (the offline default params/default.yaml ships with the "
                                  "checkout, not with the installed package)")
            files = expand_params(args.params) if args.params else [str(PROJECT / "params" / "default.yaml")]
            if args.run_id and len(files) > 1:
                raise ConfigError("--run-id names one run; give one params file with it")
            jobs = [(validated(Path(f), args.overrides), f) for f in files]  # all validated before any runs
        check_stages_for(jobs, stages, bool(args.stages))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.check:
        import yaml

        for cfg, f in jobs:
            print(f"# {f}: valid\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return EXIT_OK
    if args.prepare_only:
        from medqlora.run.colab import PrepareError, prepare

        for cfg, f in jobs:
            run_id = args.run_id or f"{cfg.run_name}-{datetime.now():%Y%m%d-%H%M%S}"
            try:
                print(f"prepared {f}: {prepare(cfg, run_id, str(reports), for_run(cfg, stages))}")
            except (FileExistsError, PrepareError) as e:
                print(f"error: --prepare-only {f}: {e}", file=sys.stderr)
                return EXIT_INVALID
        return EXIT_OK
    if args.gpus:
        try:
            gpus = gpu_ids(args.gpus)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_INVALID
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        run_ids = [args.resume] if args.resume else [args.run_id] if args.run_id else \
            [f"{cfg.run_name}-{stamp}-{i}" for i, (cfg, _) in enumerate(jobs, start=1)]
        children = [(run_id, child_argv(run_id, f, reports, bool(args.resume), args.rerun, args.overrides,
                                        args.stages, args.verbose)) for run_id, (_, f) in zip(run_ids, jobs)]
        codes = run_parallel(children, gpus, reports, args.fail_fast)
        if len(jobs) > 1:
            batch_summary([reports / r for r in run_ids], reports, codes)
        return EXIT_FAILED if batch_failed(codes) else EXIT_OK
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
        codes.append(execute(cfg, run, run_id, stages, f, resume_plan, progress, i))
        folders.append(run_path)
        if codes[-1] != EXIT_OK and args.fail_fast and i < len(jobs):
            print(f"--fail-fast: stopping the batch after {run_id} failed ({len(jobs) - i} runs not started)",
                  file=sys.stderr)
            break
    if len(jobs) > 1:  # the runs --fail-fast never started are listed too, by their params files
        batch_summary(folders, reports, codes, not_started=[f for _, f in jobs[len(codes):]])
    return EXIT_FAILED if batch_failed(codes) or len(codes) < len(jobs) else EXIT_OK
