"""A run folder kept in step with a copy at an fsspec URL (gs:// through gcsfs): restored before an execution,
copied back as it goes, so that a killed runtime leaves a state the next execution resumes from.

What resume needs travels: summary.json, results/, data/ (prepared), checkpoints/, adapter/, export/, the executed
notebooks. A checkpoint travels only when complete (its trainer_state.json, which the trainer writes last, goes up
last and marks it), so a runtime killed mid-upload never leaves a checkpoint that the next execution would pick.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

# What the prepared folder holds that is not the run's own state (never restored over, never uploaded over).
PREPARED = ("00_driver.ipynb", "prepared.json", "config.yaml")
NOT_RESTORED = ("executions/",)  # Colab Enterprise writes the executed driver notebook there


def _checkpoint(rel: str) -> str | None:
    """'checkpoints/checkpoint-8/x.bin' -> 'checkpoints/checkpoint-8'."""
    parts = rel.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 and parts[0] == "checkpoints" else None


def _put(fs, local: Path, target: str) -> None:
    if "file" in fs.protocol:
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(local), target)


class RunSync:
    """Copies what changed in a local run folder to root (an fsspec filesystem and path) since the last call."""

    def __init__(self, run_path: Path, fs, root: str):
        self.run_path, self.fs, self.root = Path(run_path), fs, root.rstrip("/")
        self.sent: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def upload(self) -> int:
        """Upload new and changed files; complete checkpoints only (trainer_state.json last); remove remote
        checkpoints that rotated away locally. Returns how many files went up."""
        with self.lock:
            files, later = [], []
            for p in sorted(self.run_path.rglob("*")):
                rel = p.relative_to(self.run_path).as_posix()
                if not p.is_file() or rel in PREPARED or rel.startswith("inputs/") or p.name.endswith(".tmp"):
                    continue
                ckpt = _checkpoint(rel)
                if ckpt and not (self.run_path / ckpt / "trainer_state.json").is_file():
                    continue  # being written: it goes up once complete
                st = p.stat()
                if self.sent.get(rel) == (st.st_size, st.st_mtime_ns):
                    continue
                (later if ckpt and p.name == "trainer_state.json" else files).append((rel, p, st))
            for rel, p, st in files + later:
                _put(self.fs, p, f"{self.root}/{rel}")
                self.sent[rel] = (st.st_size, st.st_mtime_ns)
            self._drop_rotated()
            return len(files) + len(later)

    def _drop_rotated(self) -> None:
        local = {p.name for p in (self.run_path / "checkpoints").glob("checkpoint-*")}
        try:
            remote = self.fs.ls(f"{self.root}/checkpoints", detail=False, refresh=True)
        except FileNotFoundError:
            return
        for path in remote:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("checkpoint-") and name not in local:
                self.fs.rm(path, recursive=True)
                self.sent = {k: v for k, v in self.sent.items() if not k.startswith(f"checkpoints/{name}/")}


def upload(run_path, output_url: str) -> int:
    """Copy a run folder to a URL: everything resume and review need, checkpoints included (complete ones)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output_url)
    return RunSync(Path(run_path), fs, root).upload()


def restore(fs, root: str, run_path: Path) -> list[str]:
    """Download the run's state from root into run_path (not the prepared files' copies that exist locally);
    partial checkpoints are skipped. Paths recorded under the earlier execution's run folder are rewritten to this
    one (the runtime's folder may differ). Returns notes on what was done."""
    import json

    fs.invalidate_cache()
    root = root.rstrip("/")
    try:
        found = [p for p in fs.find(root) if not p.endswith("/")]
    except FileNotFoundError:
        found = []
    rels = [p[len(root) + 1:] for p in found if p.startswith(root + "/")]
    complete = {_checkpoint(r) for r in rels if _checkpoint(r) and r.endswith("/trainer_state.json")}
    skipped = sorted({_checkpoint(r) for r in rels if _checkpoint(r) and _checkpoint(r) not in complete})
    got = 0
    for rel in rels:
        if rel in PREPARED[:2] or rel.startswith(NOT_RESTORED) or (_checkpoint(rel) in skipped) or (
                "/" not in rel and rel.endswith(".whl")):
            continue
        target = run_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(target))
        got += 1
    notes = [f"restored {got} files from {root}"] if got else []
    notes += [f"skipped partial checkpoint {c} (no trainer_state.json: its upload was cut off)" for c in skipped]
    summary = run_path / "summary.json"
    old = json.loads(summary.read_text()).get("run_dir") if summary.is_file() else None
    if old and old != str(run_path):
        for p in run_path.rglob("*.json"):
            if p.stat().st_size < 4_000_000 and old in (text := p.read_text()):
                p.write_text(text.replace(old, str(run_path)))
        notes.append(f"paths recorded under {old} now point to {run_path}")
    return notes


class Syncer(threading.Thread):
    """Uploads while the chain runs: right after each stage (summary.json changes) and every `every` seconds
    (new checkpoints during training)."""

    def __init__(self, sync: RunSync, every: float):
        super().__init__(daemon=True)
        self.sync, self.every, self.halt = sync, max(float(every), 1.0), threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        summary, seen, last = self.sync.run_path / "summary.json", None, time.monotonic()
        while not self.halt.wait(0.5):
            stamp = summary.stat().st_mtime_ns if summary.is_file() else None
            if stamp != seen or time.monotonic() - last >= self.every:
                try:
                    self.sync.upload()
                except Exception as e:  # noqa: BLE001 - the next round retries; the final upload reports
                    self.errors.append(f"{type(e).__name__}: {e}")
                seen, last = stamp, time.monotonic()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=600)
