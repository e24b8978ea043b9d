"""What the prepared 00_driver.ipynb runs on a Colab Enterprise runtime: the run's state restored from the prepared
folder, the chain run (or resumed) through the CLI, and the run folder copied back as it goes.

Every execution of one prepared folder continues the same run id: an unfinished run resumes at its first unfinished
stage (training from its newest complete checkpoint), a finished one does nothing and says so. A fresh run needs a
newly prepared folder (another --run-id)."""
from __future__ import annotations

from pathlib import Path

from medqlora.config import ConfigError
from medqlora.core.system import human_size
from medqlora.run import cli
from medqlora.run.remote import RunSync, Syncer, restore


def stage_list(stages) -> list[str]:
    """The driver's `stages` parameter: 'setup,train', a list, or one stage name; never split into characters."""
    items = stages.split(",") if isinstance(stages, str) else list(stages)
    return [s.strip() for s in items if s.strip()]


def run_prepared(output_url: str, run_id: str, stages, local_reports: str, sync_seconds: float = 60) -> int:
    """On the runtime: restore, run or resume, upload (also when a stage failed: its notebook with the error is what
    the reviewer needs). Returns runner.py's exit code."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output_url)
    run_path = Path(local_reports).resolve() / run_id
    run_path.mkdir(parents=True, exist_ok=True)
    chosen = ",".join(stage_list(stages))
    try:
        cli._stages(chosen)
    except ConfigError as e:
        print(f"error: stages {stages!r}: {e}")
        return 2
    if not (run_path / "summary.json").is_file():  # a fresh runtime: what earlier executions left is in the bucket
        for note in restore(fs, root, run_path):
            print(note)
    if not (run_path / "config.yaml").is_file():
        print(f"error: {output_url} has no config.yaml: prepare it with runner.py --prepare-only")
        return 2
    resume = (run_path / "summary.json").is_file()
    print(f"{run_id}: " + (f"resuming the run restored from {output_url}" if resume else "a new run") +
          f" in {run_path}", flush=True)
    argv = (["--reports-dir", str(run_path.parent), "--resume", run_id] if resume else
            [str(run_path / "config.yaml"), "--reports-dir", str(run_path.parent), "--run-id", run_id])
    syncer = Syncer(run_path, output_url, sync_seconds)
    syncer.start()
    try:
        code = cli.main(argv + ["--stages", chosen])
    finally:
        syncer.stop()
        final = RunSync(run_path, fs, root)
        n = final.upload()
        print(f"copied the run folder to {output_url} ({n} files, {human_size(final.bytes)} in the last upload: "
              "only what changed)")
        if syncer.errors:
            print("note: uploads during the run failed and were retried at the end:", *syncer.errors[-3:], sep="\n  ")
    return code
