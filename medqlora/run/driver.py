"""What the prepared 00_driver.ipynb runs on a Colab Enterprise runtime: the chain through the CLI, then the run
folder copied back beside the prepared notebooks."""
from __future__ import annotations

import os

from medqlora.core.rundir import NOTEBOOKS
from medqlora.run import cli
from medqlora.run.colab import upload


def run_prepared(output_url: str, run_id: str, stages: list[str], local_reports: str) -> int:
    """On the runtime: fetch config.yaml, run the chain locally, copy the run folder back to output_url
    (even when a stage failed: its notebook with the error is what the reviewer needs)."""
    from pathlib import Path

    import fsspec

    fs, root = fsspec.core.url_to_fs(output_url)
    run_path = Path(local_reports) / run_id
    run_path.mkdir(parents=True, exist_ok=True)
    fs.get_file(f"{root}/config.yaml", str(run_path / "config.yaml"))
    notebooks = Path(local_reports) / "_notebooks"  # the prepared stage notebooks: a pip install has none
    notebooks.mkdir(exist_ok=True)
    for name in NOTEBOOKS.values():
        fs.get_file(f"{root}/{name}", str(notebooks / name))
    os.environ["MEDQLORA_NOTEBOOK_DIR"] = str(notebooks)
    code = cli.main(["--reports-dir", local_reports, "--resume", run_id, "--stages", ",".join(stages)]
                       if (run_path / "summary.json").exists() else
                       [str(run_path / "config.yaml"), "--reports-dir", local_reports, "--run-id", run_id,
                        "--stages", ",".join(stages)])
    upload(run_path, output_url)
    return code
