"""A run folder kept in step with a copy at an fsspec URL (gs:// through gcsfs): restored before an execution,
copied back as it goes, so that a killed runtime leaves a state the next execution resumes from.

What resume needs travels: summary.json, results/, data/ (prepared), checkpoints/, adapter/, export/, the executed
notebooks. A checkpoint travels only when complete (its trainer_state.json, which the trainer writes last, goes up
last and marks it), so a runtime killed mid-upload never leaves a checkpoint that the next execution would pick.
The copy mirrors the folder: what the run removed (a rotated checkpoint, a format no longer exported, the export
being assembled) is removed from the bucket too. Nothing is rewritten on restore: the run records its paths relative
to its folder, so a verified export stays byte for byte what was verified.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

# What the prepared folder holds that is not the run's own state (never restored over, never uploaded over, never
# removed from the bucket), and what belongs to neither (never uploaded, and removed from the bucket if found there).
PREPARED = ("00_driver.ipynb", "prepared.json", "config.yaml")
NOT_RESTORED = ("executions/",)  # Colab Enterprise writes the executed driver notebook there
STATE = ".sync-state.json"  # what this folder last sent, kept beside the run (never uploaded)
TRANSIENT = ("export.tmp/",)  # an export being assembled: its verified result is export/
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
           "model.safetensors.index.json")


def _checkpoint(rel: str) -> str | None:
    """'checkpoints/checkpoint-8/x.bin' -> 'checkpoints/checkpoint-8'."""
    parts = rel.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 and parts[0] == "checkpoints" else None


def _protected(rel: str) -> bool:
    """The prepared folder's own files in the bucket: the sync never removes them."""
    return rel in PREPARED or rel.startswith(("inputs/",) + NOT_RESTORED) or ("/" not in rel and rel.endswith(".whl"))


def _skipped(rel: str, name: str) -> bool:
    """Local files that are not the run's state: never uploaded."""
    return rel in PREPARED or rel.startswith(("inputs/",) + TRANSIENT) or name.endswith(".tmp") or \
        name in (".sync-stop", STATE)


def _tag(info: dict) -> str:
    """What identifies one version of a remote file: GCS's generation (new at every write), else a checksum, else
    size and time."""
    for key in ("generation", "md5Hash", "ETag", "etag"):
        if info.get(key):
            return str(info[key])
    return f"{info.get('size')}:{info.get('mtime') or info.get('updated') or info.get('created')}"


def _complete(files: set[str], ckpt: str) -> bool:
    """A checkpoint whose trainer_state.json (uploaded last) and weights are there."""
    return f"{ckpt}/trainer_state.json" in files and any(f"{ckpt}/{w}" in files for w in WEIGHTS)


def _put(fs, local: Path, target: str) -> None:
    if "file" in fs.protocol:
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(local), target)


def _listing(fs, root: str) -> dict[str, dict]:
    """Every file under root, by its path relative to root, with its details (one listing, fresh)."""
    fs.invalidate_cache()
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    return {k[len(root) + 1:]: v for k, v in found.items() if k.startswith(root + "/") and v.get("type") != "directory"}


class RunSync:
    """Keeps the copy at root (an fsspec filesystem and path) equal to the local run folder: uploads what is new or
    changed, removes what the run removed. What was sent is recorded in the run folder (.sync-state.json: each
    file's local size and time with the remote version it became), so a new process, a new execution after a
    restore, or the final upload sends only what really changed; the remote version is compared too, so a file
    changed or removed in the bucket is sent again. A checkpoint goes up only complete, its trainer_state.json last;
    one being replaced loses its remote trainer_state.json first, so a cut-off upload never looks complete."""

    def __init__(self, run_path: Path, fs, root: str):
        self.run_path, self.fs, self.root = Path(run_path), fs, root.rstrip("/")
        self.lock = threading.Lock()
        self.state_path = self.run_path / STATE
        try:
            self.sent: dict[str, dict] = json.loads(self.state_path.read_text())["files"]
        except (OSError, ValueError, KeyError):
            self.sent = {}
        self.bytes = 0  # sent by this object, all calls

    def upload(self) -> int:
        """Bring the remote copy up to date. Returns how many files went up."""
        with self.lock:
            remote = _listing(self.fs, self.root)
            local, hollow = {}, set()
            for p in sorted(self.run_path.rglob("*")):
                rel = p.relative_to(self.run_path).as_posix()
                if not p.is_file() or _skipped(rel, p.name):
                    continue
                ckpt = _checkpoint(rel)
                if ckpt and not (self.run_path / ckpt / "trainer_state.json").is_file():
                    hollow.add(ckpt)  # being written: it goes up once complete
                    continue
                local[rel] = p
            todo = [rel for rel, p in local.items() if not self._same(rel, p, remote.get(rel))]
            # a checkpoint being replaced (or rewritten locally) stops looking complete in the bucket first
            for ckpt in sorted(hollow | {_checkpoint(r) for r in todo if _checkpoint(r)}):
                if f"{ckpt}/trainer_state.json" in remote:
                    self.fs.rm(f"{self.root}/{ckpt}/trainer_state.json")
                    remote.pop(f"{ckpt}/trainer_state.json")
                    self.sent.pop(f"{ckpt}/trainer_state.json", None)
            last = [r for r in todo if _checkpoint(r) and r.endswith("/trainer_state.json")]
            for rel in [r for r in todo if r not in last] + last:
                p = local[rel]
                st = p.stat()
                _put(self.fs, p, f"{self.root}/{rel}")
                info = self.fs.info(f"{self.root}/{rel}")
                self.sent[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "remote": _tag(info)}
                self.bytes += st.st_size
                self._save()
            keep = set(local) | {r for r in remote if _checkpoint(r) in hollow}
            gone = [r for r in remote if r not in keep and not _protected(r)]
            for rel in gone:  # removed or moved locally (a rotated checkpoint, a format no longer exported, ...)
                self.fs.rm(f"{self.root}/{rel}")
                self.sent.pop(rel, None)
            if gone:
                self._save()
            return len(todo)

    def _same(self, rel: str, p: Path, info: dict | None) -> bool:
        """Whether the remote copy is the version this folder sent of the file as it is now."""
        was, st = self.sent.get(rel), p.stat()
        return bool(was and info and was["size"] == st.st_size and was["mtime_ns"] == st.st_mtime_ns
                    and was["remote"] == _tag(info))

    def _save(self) -> None:
        tmp = self.state_path.with_name(STATE + ".tmp")
        tmp.write_text(json.dumps({"root": self.root, "files": self.sent}))
        os.replace(tmp, self.state_path)


def upload(run_path, output_url: str) -> int:
    """Copy a run folder to a URL: everything resume and review need, checkpoints included (complete ones)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output_url)
    return RunSync(Path(run_path), fs, root).upload()


def restore(fs, root: str, run_path: Path) -> list[str]:
    """Download the run's state from root into run_path (not the prepared files' copies that exist locally);
    partial checkpoints are skipped. Nothing is rewritten: a run records paths relative to its folder. What was
    downloaded is recorded as sent (.sync-state.json), so it does not go up again. Returns notes on what was done."""
    root = root.rstrip("/")
    remote = _listing(fs, root)
    ckpts = {_checkpoint(r) for r in remote if _checkpoint(r)}
    skipped = sorted(c for c in ckpts if not _complete(set(remote), c))
    sync = RunSync(run_path, fs, root)
    sync.sent = {}
    got = 0
    for rel, info in remote.items():
        name = rel.rsplit("/", 1)[-1]
        if rel in PREPARED[:2] or rel.startswith(NOT_RESTORED + TRANSIENT) or _checkpoint(rel) in skipped or (
                "/" not in rel and rel.endswith(".whl")) or name.endswith(".tmp") or name in (".sync-stop", STATE):
            continue  # the driver and wheel are installed already; the rest is no run state
        target = run_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(target))
        got += 1
        if not _skipped(rel, target.name):
            st = target.stat()
            sync.sent[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "remote": _tag(info)}
    sync._save()
    notes = [f"restored {got} files from {root}"] if got else []
    return notes + [f"skipped partial checkpoint {c} (no trainer_state.json or no weights: its upload was cut off)"
                    for c in skipped]


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
