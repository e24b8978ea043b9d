"""Stage 4: the deliverable adapter folder with metadata, model card and a verified SHA-256 manifest, plus the
formats export.formats asks for (export/formats.py), each checked: a format whose check failed is not published
and fails the stage, unless export.keep_failed says to keep it.

Verify any exported folder later with:  python -m medqlora.export verify reports/<run_id>/export
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import yaml

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir, portable, read_json, write_json
from medqlora.core.system import versions
from medqlora.export.formats import FOLDER, check_prompts, extra_formats, failed_checks, formats_table  # noqa: F401
from medqlora.export.manifest import (MANIFEST, add_evaluation, build_manifest, copy_to, files_table,  # noqa: F401
                                      make_zip, offer_download, run_identity, sha256_file, verify)
from medqlora.training.select import SIGNALS, kept, value_text


class ExportCheckFailed(RuntimeError):
    """A written format's check failed: it was not published; the adapter and the formats that passed were."""


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def kept_step(train: dict) -> int | None:
    """The step of the checkpoint these weights come from when it is not the last step (train.select_by, or early
    stopping, kept the best one), else None."""
    k = kept(train)
    return k["step"] if k and k["step"] != train["steps"] else None


def weights_line(train: dict) -> str:
    """Which weights the card describes, and which validation signal chose them: the last step's, or the checkpoint
    train.select_by (or early stopping) kept."""
    es, k, step = train.get("early_stopping") or {}, kept(train), kept_step(train)
    by = f"train.select_by {k['by']}" + (f": {value_text(k)}" if value_text(k) else "") if k and k["explicit"] else ""
    if step is None:
        also = f" (also {SIGNALS[k['by']][2]}, {by})" if by else ""
        return f"{train['steps']} / {train['epochs']}" + (" (stopped early)" if es.get("stopped_early") else "") + also
    stop = (f"training stopped early at step {train['steps']} (train.early_stopping_patience {es.get('patience')})"
            if es.get("stopped_early") else f"training ran to step {train['steps']}")
    return (f"checkpoint of step {step}, {SIGNALS[k['by']][2]}; {stop}, epochs {train['epochs']}"
            + (f" (kept by {by})" if by else ""))


def val_line(train: dict) -> str:
    step, acc = kept_step(train), train.get("val_accuracies") or []
    if step is not None:
        at = dict(train.get("val_losses") or []).get(step, train.get("val_best"))
        line = (f"validation {_num(train.get('val_first'))} -> {_num(at)} at the kept step {step} (last measured "
                f"{_num(train.get('val_last'))})")
    else:
        line = f"validation {_num(train.get('val_first'))} -> {_num(train.get('val_last'))}"
    if acc:  # closed-form validation items, by log-likelihood
        at = dict(acc).get(step)
        line += f"; validation accuracy {_num(acc[0][1])} -> " + (
            f"{_num(at)} at the kept step {step} (last measured {_num(acc[-1][1])})" if at is not None
            else _num(acc[-1][1]))
    return line


def rl_row(rl: dict) -> str:
    """The card's line on the reinforce stage (GRPO), whose adapter the export ships when it ran."""
    answers = ", ".join(f"{k} {v:.0%}" for k, v in (rl.get("answers") or {}).items() if v)
    return (f"| reinforcement (GRPO) | {rl['steps']} steps from {rl['started_from']} on {rl['items']} closed-form "
            f"items; mean reward {_num(rl.get('reward_start'))} -> {_num(rl.get('reward_end'))} (first and last "
            f"fifth); answers in the last fifth: {answers} |\n")


def model_card(cfg: RunConfig, train: dict | None, prep: dict, rl: dict | None = None) -> str:
    sft = "| SFT | not run |\n" if train is None else f"""| steps / epochs | {weights_line(train)} |
| loss | {_num(train.get('loss_start', train['first_loss']))} -> {_num(train.get('loss_end', train['final_loss']))} (first and last fifth of the steps; mean {_num(train.get('train_loss'))}); {val_line(train)} |
| training time | {train['seconds']} s, peak memory {train['peak_memory_gb']} GiB |
"""
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
| backend | {(train or rl)['backend']} |
| LoRA | r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, modules {', '.join(cfg.lora.target_modules)} |
{sft}{rl_row(rl) if rl else ""}| data fingerprint | {prep['fingerprint'][:16]} |

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
    # the reinforce stage's adapter when it ran for these params (rl:), else the train stage's
    rl = run.result("reinforce") if cfg.rl is not None and run.result_path("reinforce").is_file() else None
    train = run.result("train") if rl is None or run.result_path("train").is_file() else None
    prep = run.result("preprocess")
    src = run.rl_adapter_dir if rl else run.adapter_dir
    if not (src / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no trained adapter in {src}; run the {'reinforce' if rl else 'train'} stage first")
    out = run.export_dir
    tmp = out.with_name("export.tmp")
    shutil.rmtree(run / "export.rejected", ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp / "adapter", ignore=shutil.ignore_patterns("README.md", "training_args.bin"))
    # What the export records is relative to the run folder (portable): the run may be restored elsewhere, and
    # nothing may rewrite a verified export then.
    adapter_config = tmp / "adapter" / "adapter_config.json"
    write_json(adapter_config, portable(read_json(adapter_config), run.path))
    (tmp / "config.yaml").write_text(yaml.safe_dump(portable(cfg.model_dump(mode="json"), run.path), sort_keys=False))
    from medqlora.training.model import resolve_model

    ref = resolve_model(cfg.model)[0]
    write_json(tmp / "training_metadata.json", portable({
        "run_name": cfg.run_name, "run_id": run.path.name, "config": cfg.model_dump(mode="json"),
        "versions": versions(), "python": sys.version.split()[0], "git_commit": git_commit(),
        "base_model": {"reference": ref, "config": base_model_config(ref),
                       "revision": base_model_revision(ref, cfg.model)},
        "data": {k: prep[k] for k in ("format", "fingerprint", "kept", "dropped", "train_tokens")},
        "training": {k: v for k, v in (train or {}).items() if k != "losses"},
        **({"reinforce": {k: v for k, v in rl.items() if k != "rows"}} if rl else {})}, run.path))
    # the card names paths as the run does: relative to its folder (see portable)
    card = model_card(cfg, train, prep, rl)
    for root in {str(run.path), str(run.path.resolve())}:
        card = card.replace(root + "/", "")
    (tmp / "adapter" / "README.md").write_text(card)
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
    failed = failed_checks(formats)
    rejected = {} if cfg.export.keep_failed else set_aside(run, tmp, failed)
    write_json(tmp / MANIFEST, build_manifest(tmp, run_identity(run, cfg.run_name)))
    problems = verify(tmp)
    if problems:
        raise RuntimeError(f"export verification failed: {problems}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    manifest = read_json(out / MANIFEST)
    result = {"export_dir": str(out), "adapter_dir": str(out / "adapter"), "files": len(manifest["files"]),
              "bytes": sum(f["bytes"] for f in manifest["files"].values()), "verified": not verify(out),
              "adapter": adapter, "formats": formats, "failed_checks": failed, "rejected": rejected,
              "kept_failed": sorted(failed) if cfg.export.keep_failed else [],
              "adapter_source": "reinforce" if rl else "train"}
    if failed and not cfg.export.keep_failed:  # published: the adapter and what passed; not copied anywhere, no zip: the stage failed
        write_json(run / "export.rejected" / "formats.json", result)
        raise ExportCheckFailed(
            "; ".join(failed.values()) + f". Not published (set aside in {run / 'export.rejected'}); the adapter and "
            f"the formats that passed are in {out}. Keep a failed format anyway with export.keep_failed: true")
    if cfg.export.zip:
        result["zip"] = make_zip(run)
    if cfg.export.destination:
        result["destination"] = copy_to(out, cfg.export.destination)
    return result


def set_aside(run: RunDir, tmp: Path, failed: dict) -> dict:
    """Move each failed format out of the export being assembled into run/export.rejected/ (for a look, never
    published): {format: where it went}."""
    aside = run / "export.rejected"
    shutil.rmtree(aside, ignore_errors=True)
    moved = {}
    for fmt in failed:
        src = tmp / FOLDER[fmt]
        if src.exists():
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(aside / FOLDER[fmt]))
            moved[fmt] = str(aside / FOLDER[fmt])
    return moved


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


def git_commit() -> str | None:
    """The project's git commit, when it runs from a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
