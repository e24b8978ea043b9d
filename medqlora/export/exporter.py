"""Stage 4: the deliverable adapter folder with metadata, model card and a verified SHA-256 manifest.

Verify any exported folder later with:  python -m medqlora.export.exporter verify reports/<run_id>/export
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from medqlora.config import RunConfig, save_config
from medqlora.core import memory_log
from medqlora.core.rundir import RunDir, read_json, write_json
from medqlora.core.system import human_size, versions

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                      for p in files}}


def _sha256_remote(fs, path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(location: str | Path) -> list[str]:
    """Re-read an export against its manifest, in a local folder or at any fsspec URL: every missing, resized,
    changed and extra file is a problem (empty list: verified)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(location))
    root = root.rstrip("/")
    if not fs.isfile(f"{root}/{MANIFEST}"):
        return [f"no {MANIFEST} in {location}"]
    with fs.open(f"{root}/{MANIFEST}", "rb") as f:
        manifest = json.load(f)["files"]
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


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def model_card(cfg: RunConfig, train: dict, prep: dict) -> str:
    return f"""---
library_name: peft
base_model: {cfg.model.name_or_path}
tags: [medical, qlora, lora, medqlora]
---
# {cfg.run_name}: LoRA adapter

QLoRA adapter for `{cfg.model.name_or_path}`{f" ({cfg.model.gguf_file})" if cfg.model.gguf_file else ""}, trained by medqlora
on `{cfg.data.source}` ({prep['kept'].get('train', 0)} training examples, format {prep['format']},
prompt template `{cfg.data.template}`).

| | |
|---|---|
| backend | {train['backend']} |
| LoRA | r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, modules {', '.join(cfg.lora.target_modules)} |
| steps / epochs | {train['steps']} / {train['epochs']} |
| loss | {_num(train.get('loss_start', train['first_loss']))} -> {_num(train.get('loss_end', train['final_loss']))} (first and last fifth of the steps; mean {_num(train.get('train_loss'))}); validation {_num(train.get('val_first'))} -> {_num(train.get('val_last'))} |
| training time | {train['seconds']} s, peak memory {train['peak_memory_gb']} GiB |
| data fingerprint | {prep['fingerprint'][:16]} |

Load with PEFT:

```python
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("<this folder>")
```

For research use. Not a medical device; answers must be checked by a clinician.
"""


def base_model_config(ref: str) -> dict | None:
    """The base model's architecture config, so the export says what it adapts (None if unreadable offline)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref).to_dict()
    except (OSError, ValueError):
        return None


def base_model_revision(ref: str, model_cfg=None) -> dict:
    """Which exact base weights were used, when that can be known offline: the hub snapshot's commit (from the
    local cache), or for a local folder / GGUF file a fingerprint of its files' names, sizes and times."""
    import re

    p = Path(ref)
    if model_cfg is not None and model_cfg.gguf_file:
        from medqlora.training.model import converted_folder

        src, _ = converted_folder(model_cfg)
        p = src
    if not p.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, "config.json")
        except Exception:  # noqa: BLE001  (an unusual id must not fail the export)
            cached = None
        m = re.search(r"snapshots/([0-9a-f]{40})", str(cached or ""))
        return {"hub_revision": m.group(1)} if m else {"hub_revision": None, "note": "not in the local hub cache"}
    files = sorted(f for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    listing = "\n".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)
    return {"local_fingerprint": hashlib.sha256(listing.encode()).hexdigest()[:16], "files": len(files),
            "bytes": sum(f.stat().st_size for f in files)}


def export(cfg: RunConfig, run: RunDir) -> dict:
    """Assemble run/export atomically: adapter + tokenizer, config, metadata, card, manifest; then verify."""
    train = run.result("train")
    prep = run.result("preprocess")
    src = run.adapter_dir
    if not (src / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no trained adapter in {src}; run the train stage first")
    out = run.export_dir
    tmp = out.with_name("export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp / "adapter", ignore=shutil.ignore_patterns("README.md", "training_args.bin"))
    save_config(cfg, tmp / "config.yaml")
    write_json(tmp / "training_metadata.json", {
        "run_name": cfg.run_name, "run_dir": str(run.path), "config": cfg.model_dump(mode="json"),
        "versions": versions(), "python": sys.version.split()[0], "git_commit": git_commit(),
        "base_model": {"reference": train["base_model"], "config": base_model_config(train["base_model"]),
                       "revision": base_model_revision(train["base_model"], cfg.model)},
        "data": {k: prep[k] for k in ("format", "fingerprint", "kept", "dropped", "train_tokens")},
        "training": {k: v for k, v in train.items() if k != "losses"}})
    (tmp / "adapter" / "README.md").write_text(model_card(cfg, train, prep))
    try:  # the weights are checked before anything is put in place or published
        adapter = inspect_adapter(tmp / "adapter", cfg)
    except RuntimeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        formats = extra_formats(cfg, run, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(tmp / MANIFEST, build_manifest(tmp))
    problems = verify(tmp)
    if problems:
        raise RuntimeError(f"export verification failed: {problems}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    manifest = read_json(out / MANIFEST)
    result = {"export_dir": str(out), "adapter_dir": str(out / "adapter"), "files": len(manifest["files"]),
              "bytes": sum(f["bytes"] for f in manifest["files"].values()), "verified": not verify(out),
              "adapter": adapter, "formats": formats}
    if cfg.export.zip:
        result["zip"] = make_zip(run)
    if cfg.export.destination:
        result["destination"] = copy_to(out, cfg.export.destination)
    return result


def check_prompts(run: RunDir, n: int = 3) -> list[str]:
    """A few held-out prompts, exactly as evaluation sends them, for the merged and GGUF equality checks."""
    lines = [line for line in run.eval_items.read_text().splitlines() if line.strip()] if run.eval_items.is_file() else []
    return [json.loads(line)["prompt"] for line in lines[:n]] or ["What is the first-line treatment of anaphylaxis?"]


def extra_formats(cfg: RunConfig, run: RunDir, tmp: Path) -> dict:
    """merged_16bit and gguf (export.formats) into the export folder being assembled, each with its check.

    The merged model is the GGUF's source, so asking for gguf alone merges into a scratch folder. A GGUF that
    cannot be made here (a K-quant, another architecture) is reported and the other formats still exported."""
    from medqlora.export import gguf as gguf_export
    from medqlora.export import merge as MG
    from medqlora.training import model as M

    wanted = cfg.export.formats
    out: dict = {}
    if "merged_16bit" not in wanted and "gguf" not in wanted:
        return out
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    prompts = check_prompts(run)
    merged_dir = tmp / "merged" if "merged_16bit" in wanted else run / "merged.scratch"
    shutil.rmtree(merged_dir, ignore_errors=True)
    try:
        merged = MG.merge_to(cfg, ref, str(tmp / "adapter"), merged_dir, backend)
        memory_log.record(run, "export", "merged")
        if "merged_16bit" in wanted:
            merged["check"] = MG.check_merged(cfg, ref, str(tmp / "adapter"), str(merged_dir), prompts, backend)
            memory_log.record(run, "export", "merged checked")
            out["merged_16bit"] = {**merged, "dir": str(run.export_dir / "merged")}  # where it lands after the rename
        if "gguf" in wanted:
            q = cfg.export.gguf_quant
            target = tmp / "gguf" / f"{cfg.run_name}-{q}.gguf"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                g = gguf_export.write_gguf(merged_dir, target, q, cfg.run_name, gguf_export.tokenizer_pre(cfg.model))
            except gguf_export.GGUFUnsupported as e:
                shutil.rmtree(target.parent, ignore_errors=True)
                out["gguf"] = {"error": str(e)}
            else:
                try:
                    g["check"] = gguf_export.check_gguf(target, merged_dir, prompts, q)
                except Exception as e:  # noqa: BLE001  (the file is written; a read-back that cannot run is a failed check)
                    g["check"] = {"passed": False, "error": f"could not read it back: {type(e).__name__}: {e}"}
                memory_log.record(run, "export", "gguf checked")
                out["gguf"] = {**g, "file": str(run.export_dir / "gguf" / target.name)}
    finally:
        if merged_dir.parent != tmp:
            shutil.rmtree(merged_dir, ignore_errors=True)
    return out


def formats_table(result: dict):
    """One row per exported format: where, how big, how it was made and how its check came out."""
    import pandas as pd

    f = result.get("formats", {})
    rows = [("lora", result["adapter_dir"], None, "PEFT adapter", f"read back: rank {result['adapter']['rank']}, "
             f"finite, LoRA B trained {result['adapter']['lora_B_trained']}")]
    if "merged_16bit" in f:
        m, c = f["merged_16bit"], f["merged_16bit"]["check"]
        rows.append(("merged_16bit", m["dir"], m["bytes"], f"{m['method']}, {m['dtype']}",
                     f"{'PASSED' if c['passed'] else 'FAILED'}: logits rel. RMSE {c['logits_rel_rmse']:.2e} against "
                     f"the adapter model (tolerance {c['tolerance']:.2e}"
                     + (f" = 1/4 of the base's distance {c['base_vs_adapter_rel_rmse']:.2e}" if "base_vs_adapter_rel_rmse"
                        in c else "") + f"), top-1 agreement {c['top1_agreement']:.1%}; greedy answers identical on "
                     f"{c['identical']}/{c['prompts']} prompts"))
    if "gguf" in f:
        g = f["gguf"]
        c = g.get("check", {})
        if "error" in g:
            rows.append(("gguf", "not written", None, "", g["error"]))
        elif "error" in c:  # written, but the read-back could not run
            rows.append(("gguf", g["file"], g["bytes"], g["quant"], f"FAILED: {c['error']}"))
        else:
            rows.append(("gguf", g["file"], g["bytes"], f"{g['quant']}, tokenizer pre {g['tokenizer_pre']}",
                         f"{'PASSED' if c['passed'] else 'FAILED'}: logits rel. RMSE {c['logits_rel_rmse']:.2e} "
                         f"(tolerance {c['tolerance']:.0e}), top-1 agreement {c['top1_agreement']:.1%}, tokenizer "
                         f"same ids {c['tokenizer_same_ids']}, metadata {'same' if not c['metadata_differs'] else c['metadata_differs']}"))
    df = pd.DataFrame(rows, columns=["format", "where", "size", "made by", "check"])
    df["size"] = df["size"].map(human_size)
    return df.style.hide(axis="index").set_properties(**{"text-align": "left", "white-space": "pre-wrap"})


def inspect_adapter(adapter_dir: Path, cfg: RunConfig) -> dict:
    """Read the exported weights back: rank as configured, all finite, and LoRA B trained away from its zero init."""
    from peft import PeftConfig
    from safetensors.torch import load_file

    pc = PeftConfig.from_pretrained(str(adapter_dir))
    w = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    a_ranks = {t.shape[0] for k, t in w.items() if "lora_A" in k}
    b_nonzero = sum(int(t.abs().sum() > 0) for k, t in w.items() if "lora_B" in k)
    n_b = sum(1 for k in w if "lora_B" in k)
    problems = []
    if a_ranks != {cfg.lora.r}:
        problems.append(f"LoRA rank {a_ranks} != lora.r {cfg.lora.r}")
    if not all(t.isfinite().all() for t in w.values()):
        problems.append("non-finite weights")
    if b_nonzero == 0:
        problems.append("every LoRA B matrix is zero: the adapter was never trained")
    if problems:
        raise RuntimeError(f"exported adapter in {adapter_dir} is unusable: {problems}")
    return {"peft_type": str(pc.peft_type), "rank": cfg.lora.r, "tensors": len(w),
            "parameters": sum(t.numel() for t in w.values()), "lora_B_trained": f"{b_nonzero}/{n_b}"}


def copy_to(folder: Path, destination: str) -> dict:
    """Copy the export to a folder or fsspec URL (gs://, s3://, hf://, memory://; credentials from the
    environment). The manifest goes last, after every file was read back and checked: an interrupted upload
    never looks complete. A destination holding files of another export is refused."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(destination)
    root = root.rstrip("/")
    manifest = read_json(folder / MANIFEST)["files"]
    if fs.exists(root):
        stale = sorted({p[len(root) + 1:] for p in fs.find(root)} - set(manifest) - {MANIFEST})
        if stale:
            raise RuntimeError(f"{destination} holds files that are not part of this export ({stale[:5]}); give an "
                               "empty or new export.destination")
        if fs.exists(f"{root}/{MANIFEST}"):
            fs.rm(f"{root}/{MANIFEST}")  # until the new manifest is written, the copy does not look complete
    for rel in manifest:
        target = f"{root}/{rel}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(folder / rel), target)
    bad = [rel for rel, meta in manifest.items() if _sha256_remote(fs, f"{root}/{rel}") != meta["sha256"]]
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
    return f"zip: {z['path']} ({z['bytes'] / 1024**2:.2f} MiB, sha256 {z['sha256'][:16]})"


def git_commit() -> str | None:
    """The project's git commit, when it runs from a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def add_evaluation(run: RunDir, result: dict) -> list[str]:
    """Append the evaluation's metrics to the export's metadata, rewrite the manifest and verify again."""
    meta_path = run.export_dir / "training_metadata.json"
    if not meta_path.is_file():
        return [f"no export in {run.export_dir}"]
    meta = read_json(meta_path)
    meta["evaluation"] = {name: {"n_items": st["n_items"], "eval_source": st["eval_source"],
                                 "metrics": {who: {k: v for k, v in m.items() if not isinstance(v, dict)}
                                             for who, m in st["metrics"].items()}}
                          for name, st in result.get("sets", {}).items()}
    write_json(meta_path, meta)
    write_json(run.export_dir / MANIFEST, build_manifest(run.export_dir))
    return verify(run.export_dir)


def files_table(folder: Path):
    import pandas as pd

    m = read_json(Path(folder) / MANIFEST)["files"]
    rows = [(rel, human_size(meta["bytes"]), meta["sha256"][:16]) for rel, meta in m.items()]
    return pd.DataFrame(rows, columns=["file", "size", "sha256 (first 16)"])

