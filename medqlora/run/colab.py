"""Colab Enterprise: notebooks that install what they need on a fresh runtime, and runs prepared for upload.

    python runner.py --prepare-only --reports-dir gs://BUCKET/medqlora params/llama-3.1-8b-instruct.yaml

writes gs://BUCKET/medqlora/<run_id>/: config.yaml, the five stage notebooks with their parameters injected
(papermill's parameterization, nothing executed) and 00_driver.ipynb, which runs the whole chain in one execution
on the runtime and copies the run folder (executed notebooks, summary, report.html, export) back next to itself.
docs/colab-enterprise.md gives the gcloud commands. All remote I/O goes through fsspec (gcsfs for gs://).
"""
from __future__ import annotations

import os

from medqlora.config import RunConfig, save_config
from medqlora.core.rundir import NOTEBOOKS, STAGES, notebook_dir

# The first code cell after the parameters of every notebook (kept identical; a test checks). It must run before
# medqlora exists, so it is plain code, not an import. project_source: a pip requirement (git+https://...@commit,
# a wheel path or folder) or a gs:// wheel, which is copied down first (pip cannot read gs://).
BOOTSTRAP = '''# Fresh Colab / Colab Enterprise runtime: install medqlora (and, in 01_setup, Unsloth's stack) when missing
import importlib.util, os, subprocess, sys

def medqlora_install_commands(importable, source):
    """The commands that make medqlora importable: none when it already is."""
    if importable:
        return []
    if not source:
        raise RuntimeError("medqlora is not installed here: set the notebook parameter project_source (or the "
                           "environment variable MEDQLORA_PROJECT_SOURCE) to git+https://...@<commit>, a wheel, "
                           "or gs://bucket/medqlora-<version>-py3-none-any.whl")
    if source.startswith("gs://"):
        local = "/tmp/" + source.rsplit("/", 1)[-1]
        return [["gcloud", "storage", "cp", source, local], [sys.executable, "-m", "pip", "install", "-q", local]]
    return [[sys.executable, "-m", "pip", "install", "-q", source]]

for cmd in medqlora_install_commands(importlib.util.find_spec("medqlora") is not None,
                                     project_source or os.environ.get("MEDQLORA_PROJECT_SOURCE", "")):
    subprocess.run(cmd, check=True)'''

DRIVER_INTRO = """# Driver: the whole medqlora chain for one params file, in one execution
Made by `runner.py --prepare-only`. On the runtime it installs medqlora if needed, runs the five stages into a local
run folder, writes report.html, and copies the run folder to `output_url` (gs://, through fsspec/gcsfs): executed
notebooks, summary.json / summary.md, report.html, run.log and the export. Schedule it with
`gcloud colab schedules create` (docs/colab-enterprise.md)."""


def project_source_default() -> str:
    """MEDQLORA_PROJECT_SOURCE, else this checkout's origin pinned at its commit, else '' (the doc says how)."""
    if os.environ.get("MEDQLORA_PROJECT_SOURCE"):
        return os.environ["MEDQLORA_PROJECT_SOURCE"]
    import subprocess

    from medqlora.export.exporter import git_commit

    try:
        url = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        url = ""
    commit = git_commit()
    return f"git+{url}@{commit}" if url.startswith("https://") and commit else ""


def _code(source: str, tags: list[str] | None = None):
    import nbformat

    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = tags
    return cell


def driver_notebook(run_id: str, output_url: str, project_source: str, stages: list[str]):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(DRIVER_INTRO),
        _code(f"project_source = {project_source!r}  # pip requirement or gs:// wheel for a fresh runtime\n"
              f"output_url = {output_url!r}  # the prepared run folder: results are copied back here\n"
              f"run_id = {run_id!r}\nstages = {stages!r}\nlocal_reports = '/content/medqlora-reports'",
              ["parameters"]),
        _code(BOOTSTRAP),
        _code("from medqlora.run.driver import run_prepared\n\n"
              "code = run_prepared(output_url, run_id, stages, local_reports)\n"
              "assert code == 0, f'the chain failed (exit {code}); its notebooks and summary were copied to {output_url}'"),
    ]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def prepare(cfg: RunConfig, run_id: str, reports_url: str, stages: list[str] = STAGES,
            project_source: str | None = None) -> str:
    """Write <reports_url>/<run_id>/: config.yaml, the stage notebooks parameterized, and 00_driver.ipynb."""
    import tempfile
    from pathlib import Path

    import fsspec
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    fs, root = fsspec.core.url_to_fs(reports_url.rstrip("/") + "/" + run_id)
    if fs.exists(root) and fs.ls(root):
        raise FileExistsError(f"{reports_url}/{run_id} already holds files; give another --run-id")
    fs.makedirs(root, exist_ok=True)
    local_run = f"/content/medqlora-reports/{run_id}"  # where the driver runs the chain on the runtime
    source = project_source_default() if project_source is None else project_source
    with tempfile.TemporaryDirectory() as tmp:
        save_config(cfg, Path(tmp) / "config.yaml")
        fs.put_file(str(Path(tmp) / "config.yaml"), f"{root}/config.yaml")
    for stage in STAGES:
        nb = load_notebook_node(str(notebook_dir() / NOTEBOOKS[stage]))  # as papermill reads it (cell tags set)
        nb = parameterize_notebook(nb, {"config_path": f"{local_run}/config.yaml", "run_dir": local_run,
                                        "project_source": source})
        with fs.open(f"{root}/{NOTEBOOKS[stage]}", "w") as f:
            f.write(nbformat.writes(nb))
    with fs.open(f"{root}/00_driver.ipynb", "w") as f:
        f.write(nbformat.writes(driver_notebook(run_id, reports_url.rstrip("/") + "/" + run_id, source, stages)))
    return f"{reports_url.rstrip('/')}/{run_id}"


def upload(run_path, output_url: str) -> int:
    """Copy a run folder to a URL (the prepared notebooks there are replaced by the executed ones)."""
    from pathlib import Path

    import fsspec

    fs, root = fsspec.core.url_to_fs(output_url)
    files = [p for p in Path(run_path).rglob("*") if p.is_file() and "checkpoints" not in p.parts]
    for p in files:
        target = f"{root}/{p.relative_to(run_path).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(p), target)
    return len(files)

