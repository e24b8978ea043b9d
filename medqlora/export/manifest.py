"""The export's manifest (size and SHA-256 of every file, and which run made it), its verification in a local folder
or at any fsspec URL, the verified copy to export.destination, the zip, and the evaluation's later addition.

Verify any exported folder later with:  python -m medqlora.export verify reports/<run_id>/export
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from medqlora.core.rundir import RunDir, read_json, write_json
from medqlora.core.system import human_size

MANIFEST = "manifest.json"
METADATA = "training_metadata.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def run_identity(run: RunDir, run_name: str) -> dict:
    """Which run an export belongs to: a destination holding another run's export is never overwritten. The run's
    id, not its folder: a run restored into another folder (a new Colab runtime) is still the same run."""
    return {"run_name": run_name, "run_id": Path(run.path).name}


def build_manifest(folder: Path, run: dict | None = None) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    out = {"run": run} if run else {}
    return {**out, "files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                             for p in files}}


def _sha256_remote(fs, path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_manifest(fs, root: str) -> dict | None:
    if not fs.isfile(f"{root}/{MANIFEST}"):
        return None
    with fs.open(f"{root}/{MANIFEST}", "rb") as f:
        return json.load(f)


def verify(location: str | Path) -> list[str]:
    """Re-read an export against its manifest, in a local folder or at any fsspec URL: every missing, resized,
    changed and extra file is a problem (empty list: verified)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(location))
    root = root.rstrip("/")
    manifest = _read_manifest(fs, root)
    if manifest is None:
        return [f"no {MANIFEST} in {location}"]
    manifest = manifest["files"]
    present = {p[len(root) + 1:]: p for p in fs.find(root)}
    present.pop(MANIFEST, None)
    problems = []
    for rel, meta in manifest.items():
        if rel not in present:
            problems.append(f"missing: {rel}")
        elif fs.size(present[rel]) != meta["bytes"]:
            problems.append(f"size differs: {rel} ({fs.size(present[rel])} != {meta['bytes']})")
        elif _sha256_remote(fs, present[rel]) != meta["sha256"]:
            problems.append(f"checksum differs: {rel}")
    problems += [f"extra: {rel} (not in the manifest)" for rel in sorted(set(present) - set(manifest))]
    return problems


def copy_to(folder: Path, destination: str, only: list[str] | None = None) -> dict:
    """Copy the export to a folder or fsspec URL (gs://, s3://, hf://, memory://; credentials from the
    environment). The manifest goes last, after every file was read back and checked: an interrupted upload
    never looks complete. A destination holding another run's export, or files of no export, is refused.
    `only`: copy just these files (the rest is already there and verified)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(destination)
    root = root.rstrip("/")
    mine = read_json(folder / MANIFEST)
    manifest = mine["files"]
    if fs.exists(root):
        theirs = _read_manifest(fs, root)
        if theirs is not None and theirs.get("run") != mine.get("run"):
            who = theirs.get("run") or "a manifest that names no run"
            raise RuntimeError(f"{destination} holds the export of another run ({who}); it is left as it is. Give "
                               "an empty or new export.destination (e.g. one folder per run)")
        stale = sorted({p[len(root) + 1:] for p in fs.find(root)} - set(manifest) - {MANIFEST})
        owned = set((theirs or {}).get("files", {}))  # this run's earlier export: what it wrote, it may replace
        foreign = [rel for rel in stale if rel not in owned]
        if foreign:
            raise RuntimeError(f"{destination} holds files that are not part of this export ({foreign[:5]}); give an "
                               "empty or new export.destination")
        if fs.exists(f"{root}/{MANIFEST}"):
            fs.rm(f"{root}/{MANIFEST}")  # until the new manifest is written, the copy does not look complete
        for rel in stale:  # this run's earlier export had them (e.g. a format since dropped)
            fs.rm(f"{root}/{rel}")
    todo = list(manifest) if only is None else [rel for rel in only if rel in manifest]
    for rel in todo:
        target = f"{root}/{rel}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(folder / rel), target)
    bad = [rel for rel in todo if _sha256_remote(fs, f"{root}/{rel}") != manifest[rel]["sha256"]]
    if bad:
        raise RuntimeError(f"copy to {destination} failed verification for {bad}; its manifest was not written")
    fs.put_file(str(folder / MANIFEST), f"{root}/{MANIFEST}")
    problems = verify(destination)
    if problems:
        raise RuntimeError(f"copy to {destination} does not verify: {problems}")
    return {"url": destination, "files": len(manifest), "verified": True}


def make_zip(run: RunDir) -> dict:
    """One zip of the export folder (manifest inside), beside it in the run folder, for a download."""
    out = shutil.make_archive(str(run / "export"), "zip", root_dir=str(run.path), base_dir="export")
    return {"path": out, "bytes": Path(out).stat().st_size, "sha256": sha256_file(Path(out))}


EVALUATION = "evaluation.json"


def add_evaluation(run: RunDir, result: dict, export_cfg=None) -> dict:
    """Add the evaluation's metrics to the export as a file of its own (evaluation.json): only into an export that
    still verifies (else refused, naming each difference). No file the export stage wrote and verified is edited:
    the new file and the manifest that lists it are each written whole (temporary file, then rename). Then the copy
    at export.destination and export.zip are brought up to date, so neither is left stale."""
    folder = run.export_dir
    if not (folder / METADATA).is_file():
        raise FileNotFoundError(f"no export in {folder}; run the export stage first")
    problems = [p for p in verify(folder) if p != f"extra: {EVALUATION} (not in the manifest)"]
    if problems:
        raise RuntimeError(f"the export in {folder} no longer matches its manifest ({'; '.join(problems[:5])}): "
                           "the evaluation is not added to it, nor is it copied anywhere. Export again (papermill "
                           f"notebooks/04_export.ipynb {run.path}/04_export.ipynb -p config_path {run.path}/config.yaml "
                           f"-p run_dir {run.path}), then python runner.py --resume {run.path.name}")
    write_json(folder / EVALUATION, {name: {"n_items": st["n_items"], "eval_source": st["eval_source"],
                                            "metrics": {who: {k: v for k, v in m.items() if not isinstance(v, dict)}
                                                        for who, m in st["metrics"].items()}}
                                     for name, st in result.get("sets", {}).items()})
    manifest = read_json(folder / MANIFEST)
    manifest["files"][EVALUATION] = {"bytes": (folder / EVALUATION).stat().st_size,
                                     "sha256": sha256_file(folder / EVALUATION)}
    write_json(folder / MANIFEST, manifest)
    problems = verify(folder)
    if problems:
        raise RuntimeError(f"the export in {folder} does not verify after adding the evaluation: {problems}")
    out: dict = {"verified": True, "added": [EVALUATION], "updated": [MANIFEST]}
    if export_cfg is not None and export_cfg.destination:
        out["destination"] = copy_to(folder, export_cfg.destination, only=[EVALUATION])
    if (run / "export.zip").is_file() or (export_cfg is not None and export_cfg.zip):
        out["zip"] = make_zip(run)
    return out


def offer_download(result: dict) -> str:
    """On Colab, start the browser download of the zip; elsewhere, say where it is."""
    z = result.get("zip")
    if not z:
        return "no zip (set export.zip: true)"
    from medqlora.core.system import in_colab

    if in_colab():
        from google.colab import files  # noqa: PLC0415  (exists on Colab only)

        files.download(z["path"])
        return f"download of {z['path']} started"
    return f"zip: {z['path']} ({human_size(z['bytes'])}, sha256 {z['sha256'][:16]})"


def files_table(folder: Path):
    import pandas as pd

    m = read_json(Path(folder) / MANIFEST)["files"]
    rows = [(rel, human_size(meta["bytes"]), meta["sha256"][:16]) for rel, meta in m.items()]
    return pd.DataFrame(rows, columns=["file", "size", "sha256 (first 16)"])
