"""Colab Enterprise: a run prepared in Cloud Storage that executes on a runtime which has nothing of this machine.

    python runner.py --prepare-only --reports-dir gs://BUCKET/medqlora params/llama-3.1-8b-instruct.yaml

writes gs://BUCKET/medqlora/<run_id>/: config.yaml (local paths rewritten to inputs/ beside it), inputs/ (the local
data files and model folder it names), the medqlora wheel built from this checkout (or MEDQLORA_PROJECT_SOURCE),
prepared.json (what was prepared from what) and 00_driver.ipynb, which installs medqlora on the runtime, restores
what earlier executions left in the folder, runs the chain (medqlora.run.driver) and copies the run folder back
as it goes. Anything the runtime could not reach (a pkg:// model, a local export.destination, a URL carrying
credentials) is refused before anything is written. docs/colab-enterprise.md gives the gcloud commands.
"""
from __future__ import annotations

import os
from pathlib import Path

from medqlora.config import RunConfig, save_config
from medqlora.core.rundir import IN_CHECKOUT, PROJECT, STAGES

# The bootstrap: the first code cell after the parameters of 00_driver.ipynb and notebooks/01_setup.ipynb (kept
# identical; a test checks). It runs before medqlora exists, so it is plain code. project_source: a wheel (a path,
# or gs://, copied down first: pip cannot read gs://) or a pip requirement such as git+https://...@<commit>.
BOOTSTRAP = '''# A fresh Colab / Colab Enterprise runtime has no medqlora: install it from project_source
# (01_setup then adds the GPU stack)
import importlib.util, os, subprocess, sys
source = project_source or os.environ.get("MEDQLORA_PROJECT_SOURCE", "")
missing = importlib.util.find_spec("medqlora") is None
if missing and not source:
    raise RuntimeError("medqlora is not installed in this kernel: set the parameter project_source (or the environment "
                       "variable MEDQLORA_PROJECT_SOURCE) to a medqlora wheel (a path or gs://...) or to "
                       "git+https://github.com/<org>/medqlora@<commit> (README: 'On a GPU and on Colab')")
if missing and source.startswith("gs://"):
    subprocess.run(["gcloud", "storage", "cp", source, "/tmp/"], check=True)
    source = "/tmp/" + source.rsplit("/", 1)[-1]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)
    importlib.invalidate_caches()'''

# The other stage notebooks only check (01_setup or the driver installs).
CHECK = '''import importlib.util  # on a fresh runtime 01_setup.ipynb (or the driver) installs medqlora; here only a check
assert importlib.util.find_spec("medqlora"), "no medqlora here: run 01_setup.ipynb (project_source) or %pip install it"'''

DRIVER_INTRO = """# Driver: the whole medqlora chain for one prepared run, in one execution
Made by `runner.py --prepare-only`. On the runtime it installs medqlora if needed (`project_source`), restores what
earlier executions left in `output_url` (summary, results, prepared data, checkpoints, export), then runs or resumes
the chain in a local run folder, copying it back to `output_url` after every stage and every complete checkpoint:
executed notebooks, summary.json / summary.md, report.html, run.log, the export. A second execution of an
unfinished run resumes it (from the newest complete checkpoint); of a finished run it does nothing.
Schedule it with `gcloud colab schedules create` (docs/colab-enterprise.md)."""


class PrepareError(ValueError):
    """Something the runtime could not use; nothing was written."""


def safe_source(source: str) -> str:
    """A project_source that carries no secret and that a runtime can install, or PrepareError saying what to do."""
    from urllib.parse import urlsplit

    url = urlsplit(source[4:] if source.startswith("git+") else source)
    if url.scheme in ("ssh", "git") or (not url.scheme and "@" in source and ":" in source.split("@", 1)[1]):
        raise PrepareError(f"project_source {url.scheme or 'scp-style'} URL: a Colab runtime has no SSH key to "
                           "clone it; set MEDQLORA_PROJECT_SOURCE to a wheel or git+https://...@<commit>, or unset it "
                           "to upload a wheel built from this checkout")
    if url.scheme and (url.username or url.password):
        raise PrepareError("project_source carries credentials (user:token@ in the URL), which would be written into "
                           "every prepared and executed notebook; set MEDQLORA_PROJECT_SOURCE to a URL without them "
                           "(a public repository, or a wheel: unset it to upload one built from this checkout)")
    if not url.scheme and Path(source).exists():
        raise PrepareError(f"project_source {source}: a path on this machine, which the runtime cannot read; give a "
                           "wheel file (it is uploaded), gs://... or git+https://...@<commit>")
    if any(k in url.query.lower() for k in ("token", "sig", "key", "credential")):
        raise PrepareError("project_source has a signed or token query string; use a gs:// wheel or a public URL")
    return source


def build_wheel(out_dir: Path) -> Path:
    """The medqlora wheel (notebooks inside) built from this checkout, without touching the checkout."""
    import shutil
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PROJECT / name, src / name)
        for name in ("medqlora", "notebooks"):
            shutil.copytree(PROJECT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(out_dir), str(src)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise PrepareError(f"could not build the medqlora wheel from {PROJECT}: {r.stderr.strip()[-800:]}")
    return next(Path(out_dir).glob("medqlora-*.whl"))


def _portable(cfg: RunConfig) -> tuple[RunConfig, list[tuple[str, str]]]:
    """The config with every local path rewritten to inputs/<name> (relative to config.yaml, so the runtime reads
    them beside it), and the (local path, inputs/<name>) pairs to upload; PrepareError for what cannot travel."""
    cfg = cfg.model_copy(deep=True)
    uploads: list[tuple[str, str]] = []

    def move(path: str, key: str) -> str:
        p = Path(path)
        if not p.exists():
            raise PrepareError(f"{key}: {path} does not exist on this machine, so it cannot be uploaded")
        name = p.name
        while any(rel == f"inputs/{name}" for _, rel in uploads):
            name = f"{len(uploads)}-{p.name}"
        uploads.append((str(p), f"inputs/{name}"))
        return f"inputs/{name}"

    m = cfg.model
    if m.name_or_path.startswith("pkg://"):
        raise PrepareError(f"model.name_or_path {m.name_or_path}: a package installed on this machine, which the "
                           "runtime does not have; give a hub id or a local model folder (it is uploaded beside the notebooks)")
    if Path(m.name_or_path).is_absolute():
        m.name_or_path = move(m.name_or_path, "model.name_or_path")
    m.cache_dir = type(m).model_fields["cache_dir"].default  # this machine's cache means nothing there
    d = cfg.data
    for key in ("source", "eval_source"):
        v = getattr(d, key)
        if v and Path(v).is_absolute():
            setattr(d, key, move(v, f"data.{key}"))
    for i, s in enumerate(cfg.eval.sets):
        if Path(s.source).is_absolute():
            s.source = move(s.source, f"eval.sets[{i}].source")
    dest = cfg.export.destination
    if dest and "://" not in dest:
        raise PrepareError(f"export.destination {dest}: a folder on this machine, which the runtime cannot reach; use "
                           "gs://... or leave it out (the export is copied back to the prepared folder anyway)")
    return cfg, uploads


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
        _code(f"project_source = {project_source!r}  # a medqlora wheel (gs:// or a path) or pip requirement\n"
              f"output_url = {output_url!r}  # the prepared run folder: restored from, and copied back to\n"
              f"run_id = {run_id!r}  # the run folder's name (every execution continues this run)\n"
              f"stages = {','.join(stages)!r}  # comma-separated subset of {','.join(STAGES)}\n"
              "local_reports = '/content/medqlora-reports'  # where the chain runs on the runtime\n"
              "sync_seconds = 60  # also copy new files back this often while a stage runs (checkpoints)",
              ["parameters"]),
        _code(BOOTSTRAP),
        _code("from medqlora.run.driver import run_prepared\n\n"
              "code = run_prepared(output_url, run_id, stages, local_reports, sync_seconds)\n"
              "assert code == 0, f'the chain failed (exit {code}); its notebooks and summary are in {output_url}'"),
    ]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def _source_for(staging: Path) -> tuple[str, Path | None]:
    """(project_source for the runtime, a local wheel to upload beside the notebooks or None)."""
    given = os.environ.get("MEDQLORA_PROJECT_SOURCE", "")
    if given and Path(given).is_file() and given.endswith(".whl"):
        return given, Path(given)
    if given:
        return safe_source(given), None
    if not IN_CHECKOUT:
        raise PrepareError("this medqlora is an installed package, not a checkout, so no wheel can be built from it: "
                           "set MEDQLORA_PROJECT_SOURCE to a medqlora wheel (a path or gs://...) or to "
                           "git+https://...@<commit>")
    wheel = build_wheel(staging)
    return "", wheel


def prepare(cfg: RunConfig, run_id: str, reports_url: str, stages: list[str] = STAGES) -> str:
    """Write <reports_url>/<run_id>/ (module docstring). Raises PrepareError (nothing written) or FileExistsError."""
    import json
    import tempfile
    from datetime import datetime

    import fsspec
    import nbformat

    from medqlora.export.exporter import git_commit

    url = reports_url.rstrip("/") + "/" + run_id
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise PrepareError(f"--reports-dir {reports_url}: {e} (gs:// needs gcsfs: pip install 'medqlora[gcs]')") from e
    if fs.exists(root) and fs.ls(root):
        raise FileExistsError(f"{url} already holds files; give another --run-id")
    portable, uploads = _portable(cfg)  # every check before anything is written
    with tempfile.TemporaryDirectory() as tmp:
        source, wheel = _source_for(Path(tmp))
        if wheel is not None:
            source = f"{url}/{wheel.name}"
        if "file" in fs.protocol:
            fs.makedirs(root, exist_ok=True)
        save_config(portable, Path(tmp) / "config.yaml")
        fs.put_file(str(Path(tmp) / "config.yaml"), f"{root}/config.yaml")
        if wheel is not None:
            fs.put_file(str(wheel), f"{root}/{wheel.name}")
        for local, rel in uploads:
            fs.put(local, f"{root}/{rel}", recursive=Path(local).is_dir())
    info = {"run_id": run_id, "prepared": datetime.now().isoformat(timespec="seconds"), "project_source": source,
            "built_from": {"checkout": str(PROJECT), "git_commit": git_commit()} if wheel and IN_CHECKOUT else None,
            "stages": stages, "inputs": {rel: local for local, rel in uploads}}
    with fs.open(f"{root}/prepared.json", "w") as f:
        f.write(json.dumps(info, indent=2))
    with fs.open(f"{root}/00_driver.ipynb", "w") as f:
        f.write(nbformat.writes(driver_notebook(run_id, url, source, stages)))
    for local, rel in uploads:
        print(f"uploaded {local} -> {url}/{rel}")
    return url

