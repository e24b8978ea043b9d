"""The base model's answers, computed once and reused (issue 31).

Every run of a batch on one base model answers the same eval items with the same base model, and a resumed run answers
them again. The base pass's answers of each eval set (the generated texts and the log-likelihood scores) are kept in
a file keyed by a fingerprint of everything they depend on:

  model       the base weights (every file of the local folder, or of the hub snapshot in the local cache: names,
              sizes and contents, large files by three 1 MiB samples), how they are loaded (4-bit or dequantized,
              compute dtype, backend) and the tokenizer's pad and eos tokens
  items       every item of the set as the preprocess stage wrote it (prompt, options, reference)
  settings    every eval setting that can change an answer (answer lengths, repetition penalty, how closed-form items
              are scored...; one added later counts unless listed in IRRELEVANT), the prompt template and system
              prompt, the batches, the decoding engine, the device and the library versions

Any change of one of them is another key, so a stale answer is never reused. Sampled answers (eval.temperature > 0)
are never reused: they depend on the random state the passes before them left.

Where (eval.base_answers_cache): the run folder's own eval/base-answers/ (a resumed run, a run restored elsewhere)
and a shared folder, by default base-answers/ beside the run folders (every run of a batch).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

VERSION = 1
WHOLE = 4 << 20  # files up to this size are hashed whole
SAMPLE = 1 << 20  # larger ones by their size and three samples of this size (start, middle, end)
# eval settings that change no base answer: what is shown, where the cache is, the decoding engine (keyed apart), and
# which items are scored (the items themselves are keyed)
IRRELEVANT = {"show_examples", "queries", "base_answers_cache", "decoding", "max_samples", "sets"}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}:".encode())
    with open(path, "rb") as f:
        if size <= WHOLE:
            h.update(f.read())
        else:
            for at in (0, size // 2 - SAMPLE // 2, size - SAMPLE):
                f.seek(at)
                h.update(f.read(SAMPLE))
    return h.hexdigest()


def local_folder(ref: str) -> Path | None:
    """The folder the base weights are read from: ref itself, or the hub snapshot in the local cache."""
    p = Path(ref).expanduser()
    if p.exists():
        return p
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except Exception:  # noqa: BLE001  (an unusual id: the weights are then unidentified, never reused)
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def model_fingerprint(ref: str) -> str | None:
    """A digest of every file of the base model's folder (names, sizes, contents; None where it is not on this
    machine). Where the folder sits does not count: the same weights copied elsewhere are the same model."""
    folder = local_folder(ref)
    if folder is None:
        return None
    files = [folder] if folder.is_file() else sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".lock"))
    return digest({str(p.relative_to(folder)) if p != folder else p.name: file_digest(p) for p in files})


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "unsloth"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def device_name(model) -> str:
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return device.type


def shared_folder(cfg, run) -> Path | None:
    """eval.base_answers_cache as a folder: auto is base-answers/ beside the run folders; None: off."""
    where = cfg.eval.base_answers_cache
    if where is None:
        return None
    return Path(run.path).resolve().parent / "base-answers" if where == "auto" else Path(where).expanduser()


class BaseAnswers:
    """Lookup and store of the base pass's answers per eval set; `status` says, per set, what happened."""

    def __init__(self, folders: list[Path], parts: dict | None, off: str | None = None):
        self.folders, self.parts, self.off = folders, parts, off
        self.status: dict[str, dict] = {}

    @classmethod
    def for_run(cls, cfg, run, *, ref: str, tok, model, backend: str, merged: bool, engine: str, batch: int,
                loglik_batch: int, plan: dict) -> BaseAnswers:
        from medqlora.training.model import compute_dtype

        shared = shared_folder(cfg, run)
        if shared is None:
            return cls([], None, "eval.base_answers_cache: null")
        if cfg.eval.temperature > 0:
            return cls([], None, "sampled answers (eval.temperature > 0) are never reused")
        weights = model_fingerprint(ref)
        if weights is None:
            return cls([], None, f"the base weights of {ref} are not on this machine: they cannot be identified")
        e, m = cfg.eval, cfg.model
        parts = {
            "version": VERSION,
            "model": {"weights": weights, "load_in_4bit": m.load_in_4bit and not merged, "dtype": str(compute_dtype(m)),
                      "backend": backend, "dequantized": merged, "pad": tok.pad_token_id, "eos": tok.eos_token_id},
            # every eval setting but those that cannot change an answer (a setting added later counts by default)
            "settings": {"eval": e.model_dump(mode="json", exclude=IRRELEVANT), "template": cfg.data.template,
                         "system_prompt": cfg.data.system_prompt,
                         "choice_plan": {k: plan[k] for k in ("generate", "loglik", "prompt")}, "batch": batch,
                         "loglik_batch": loglik_batch, "engine": engine, "device": device_name(model),
                         "versions": versions()}}
        return cls([Path(run.path) / "eval" / "base-answers", shared], parts)

    def key(self, items: list[dict]) -> str:
        return digest({**self.parts, "items": [digest(it) for it in items]})

    def _file(self, folder: Path, name: str, key: str) -> Path:
        return folder / f"{name}-{key[:20]}.json"

    def load(self, name: str, items: list[dict], n_generated: int) -> dict | None:
        """The set's stored base answers ({answers, choices, seconds, tokens}) where one of the folders has them for
        exactly this key, else None."""
        if self.off:
            self.status[name] = {"reused": False, "why": self.off}
            return None
        key = self.key(items)
        for folder in self.folders:
            path = self._file(folder, name, key)
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if entry.get("key") == key and len(entry.get("answers", ())) == n_generated \
                    and len(entry.get("choices", ())) == len(items):
                self.status[name] = {"reused": True, "from": str(path), "made_by": entry.get("made_by")}
                return entry
        self.status[name] = {"reused": False, "why": "computed (no stored answers for this model, items and settings)"}
        return None

    def save(self, name: str, items: list[dict], answers: list[dict], choices: list, seconds: float, tokens: int,
             made_by: str) -> None:
        if self.off:
            return
        key = self.key(items)
        entry = {"key": key, "set": name, "n_items": len(items), "answers": answers, "choices": choices,
                 "seconds": round(seconds, 2), "tokens": tokens, "made_by": made_by,
                 "created": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": self.parts}
        saved = []
        for folder in self.folders:
            path = self._file(folder, name, key)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entry, ensure_ascii=False))
                os.replace(tmp, path)  # a reader never sees half a file; parallel runs write the same content
                saved.append(str(path))
            except OSError as err:  # a read-only shared folder must not fail the stage
                self.status.setdefault(name, {})["save_error"] = f"{path}: {err}"
        self.status.setdefault(name, {})["saved_to"] = saved

    def summary(self) -> dict:
        reused = [n for n, s in self.status.items() if s.get("reused")]
        computed = [n for n in self.status if n not in reused]
        if self.off:
            note = f"base answers computed here ({self.off})"
        elif not reused:
            note = f"base answers computed here and saved to {self.folders[-1]} for the next runs"
        else:
            where = sorted({str(Path(self.status[n]["from"]).parent) for n in reused})
            note = (f"base answers reused from {', '.join(where)} ({len(reused)} of {len(self.status)} eval sets"
                    + (f"; computed: {', '.join(computed)})" if computed else ")"))
        return {"folders": [str(f) for f in self.folders], "off": self.off, "reused": reused, "computed": computed,
                "sets": self.status, "note": note}
