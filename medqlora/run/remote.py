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
        self.remote: dict[str, int] | None = None  # sizes found in the bucket on the first upload
        self.checkpoints: set[str] | None = None  # local checkpoint names at the last look

    def upload(self) -> int:
        """Upload new and changed files; complete checkpoints only (trainer_state.json last); remove remote
        checkpoints that rotated away locally. Returns how many files went up."""
        with self.lock:
            files, later = [], []
            for p in sorted(self.run_path.rglob("*")):
                rel = p.relative_to(self.run_path).as_posix()
                if not p.is_file() or rel in PREPARED or rel.startswith("inputs/") or p.name.endswith(".tmp") or \
                        p.name == ".sync-stop":
                    continue
                ckpt = _checkpoint(rel)
                if ckpt and not (self.run_path / ckpt / "trainer_state.json").is_file():
                    continue  # being written: it goes up once complete
                st = p.stat()
                if self.sent.get(rel) == (st.st_size, st.st_mtime_ns) or (
                        ckpt and self._remote_sizes().get(rel) == st.st_size):  # a complete checkpoint never changes
                    continue
                (later if ckpt and p.name == "trainer_state.json" else files).append((rel, p, st))
            for rel, p, st in files + later:
                _put(self.fs, p, f"{self.root}/{rel}")
                self.sent[rel] = (st.st_size, st.st_mtime_ns)
            self._drop_rotated()
            return len(files) + len(later)

    def _remote_sizes(self) -> dict[str, int]:
        if self.remote is None:
            try:
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError:
                found = {}
            self.remote = {k[len(self.root) + 1:]: v.get("size") for k, v in found.items()
                           if k.startswith(self.root + "/")}
        return self.remote

    def _drop_rotated(self) -> None:
        local = {p.name for p in (self.run_path / "checkpoints").glob("checkpoint-*")}
        if local == self.checkpoints:
            return  # nothing rotated since the last look: no listing call
        self.checkpoints = local
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


class Syncer:
    """Uploads while the chain runs, right after each stage (summary.json changes) and every `every` seconds (new
    checkpoints during training), from a child process: a thread in the driver's kernel stalls while papermill runs
    a stage there (measured: nothing went up until the stage ended)."""

    def __init__(self, run_path: Path, output_url: str, every: float):
        self.run_path, self.url, self.every = Path(run_path), output_url, max(float(every), 1.0)
        self.stop_file = self.run_path / ".sync-stop"
        self.proc = None

    def start(self) -> None:
        import subprocess
        import sys

        self.stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", "import sys; from medqlora.run.remote import watch; "
                                      "watch(sys.argv[1], sys.argv[2], float(sys.argv[3]))", str(self.run_path),
                                      self.url, str(self.every)])

    def stop(self) -> None:
        """Let the current upload finish, then end the child."""
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=300)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        self.stop_file.unlink(missing_ok=True)

    @property
    def errors(self) -> list[str]:
        log = self.run_path / "sync-errors.log"
        return log.read_text().splitlines() if log.is_file() else []


def watch(run_path: str, output_url: str, every: float) -> None:
    """The Syncer's child: upload on each change of summary.json and every `every` seconds, until the stop file
    appears or the driver is gone."""
    import os

    import fsspec

    fs, root = fsspec.core.url_to_fs(output_url)
    sync, parent = RunSync(Path(run_path), fs, root), os.getppid()
    summary, stop = Path(run_path) / "summary.json", Path(run_path) / ".sync-stop"
    seen, last = None, 0.0
    while not stop.exists() and os.getppid() == parent:
        stamp = summary.stat().st_mtime_ns if summary.is_file() else None
        if stamp != seen or time.monotonic() - last >= every:
            try:
                sync.upload()
            except Exception as e:  # noqa: BLE001 - the next round retries; the driver's final upload reports
                with open(Path(run_path) / "sync-errors.log", "a") as f:
                    f.write(f"{type(e).__name__}: {e}\n")
            seen, last = stamp, time.monotonic()
        time.sleep(0.5)
