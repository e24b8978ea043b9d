"""A scheduled Colab Enterprise run from start to end, against a GCS API server (conftest: gcs_server), with the real
stages on the tiny model: one prepared run executed through the driver, each execution in a new, empty local folder
(a fresh runtime), the runtime killed (kill -9 of the driver and every process under it) during training, then during
the export; the run finished; export.formats changed (one format fewer) and executed again; then an execution with
nothing to do. At the end the bucket's export verifies, the bucket holds nothing the run folder does not, a restore
into yet another folder gives the bucket's run byte for byte, and the idle execution sent under 1 MiB.

Run with -s to see the figures (seconds and bytes sent per execution)."""
import json
import os
import subprocess
import sys
import time

import psutil
import yaml
from conftest import ROOT, gcs, tiny_params

from medqlora.core.rundir import STAGES
from medqlora.export.manifest import verify
from medqlora.run import cli as runner
from medqlora.run.remote import restore

WHEEL = "gs://wheels/medqlora-0.1.0-py3-none-any.whl"  # the runtime here already has medqlora: no build
SECRET = "ghp_SECRETtoken123"


def objects(root: str) -> dict[str, tuple[str, int]]:
    """Every object under root: rel -> (generation, size): what a later snapshot compares to count bytes sent."""
    fs = gcs()
    return {k[len(root) + 1:]: (str(v.get("generation")), int(v["size"]))
            for k, v in fs.find(root, detail=True).items()}


def sent_between(before: dict, after: dict) -> int:
    """Bytes written to the bucket between two snapshots (new objects and new generations), as the server saw it."""
    return sum(size for rel, (gen, size) in after.items() if before.get(rel, (None,))[0] != gen)


def kill_tree(proc: subprocess.Popen) -> None:
    """The runtime dies: the driver and every process under it (stage kernels, the sync child), at once."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def execute(url: str, folder, until=None, timeout: float = 600) -> tuple[int | None, str, float]:
    """One execution of the prepared driver in its own process, in the empty folder `folder`. `until(folder)`:
    kill -9 the whole runtime as soon as it says so. Returns (exit code or None if killed, output, seconds)."""
    code = ("import sys; from medqlora.run.driver import run_prepared; "
            f"sys.exit(run_prepared({url!r}, 's', {','.join(STAGES)!r}, {str(folder)!r}, 1))")
    log = folder.parent / f"{folder.name}.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if until is not None and until(folder / "s"):
                kill_tree(proc)
                return None, log.read_text(), time.monotonic() - t0
            time.sleep(0.05)
        if proc.poll() is None:
            kill_tree(proc)
            raise AssertionError(f"execution in {folder} ran past {timeout} s:\n{log.read_text()[-3000:]}")
    return proc.returncode, log.read_text(), time.monotonic() - t0


def local_files(run) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def test_a_scheduled_run_survives_kills_and_a_re_export_and_its_bucket_always_verifies(tmp_path, tiny_model_dir,
                                                                                      sample_data, gs_folder,
                                                                                      monkeypatch, capsys):
    monkeypatch.setenv("MEDQLORA_PROJECT_SOURCE", WHEEL)
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data,
                         train={"epochs": 12, "save_steps": 4, "save_total_limit": 2},
                         export={"formats": ["lora", "merged_16bit", "gguf"]})
    # a URL field carrying a token is refused before anything is written: no credential reaches the bucket
    raw = yaml.safe_load(params.read_text())
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text(yaml.safe_dump({**raw, "export": {"destination": f"https://u:{SECRET}@example.org/x"}}))
    assert runner.main([str(leaky), "--prepare-only", "--reports-dir", gs_folder, "--run-id", "leak"]) == 2
    assert runner.main([str(params), "--prepare-only", "--reports-dir", gs_folder, "--run-id", "s"]) == 0
    url, fs = f"{gs_folder}/s", gcs()
    root = url.removeprefix("gs://")
    figures = []

    def run(name, until=None):
        before = objects(root)
        code, out, seconds = execute(url, tmp_path / name, until)
        figures.append((name, code, round(seconds, 1), sent_between(before, objects(root))))
        return code, out

    def trained_a_checkpoint(run_path):  # a complete checkpoint is in the bucket: training is under way
        if not list(run_path.glob("checkpoints/*/trainer_state.json")):
            return False  # nothing local yet: no need to ask the bucket
        fs.invalidate_cache()
        return any(p.endswith("/trainer_state.json") for p in fs.find(f"{root}/checkpoints"))

    code, out = run("runtime1", trained_a_checkpoint)
    assert code is None, out[-3000:]
    state = json.loads(fs.cat(f"{root}/summary.json"))
    assert [s["name"] for s in state["stages"] if s["status"] == "ok"] == ["setup", "preprocess"], state

    code, out = run("runtime2", lambda run_path: (run_path / "export.tmp").is_dir())
    assert code is None, out[-3000:]
    trained = json.loads((tmp_path / "runtime2" / "s" / "results" / "train.json").read_text())
    assert "resuming at stage train" in out and trained["resumed_from"], "training went on from the checkpoint"
    assert not any(k.startswith("export.tmp/") for k in objects(root))

    code, out = run("runtime3")
    assert code == 0, out[-4000:]
    assert "resuming at stage export" in out, "train finished in runtime2: not redone"
    assert verify(f"{url}/export") == []
    assert any(k.startswith("export/merged/") for k in objects(root))

    config = yaml.safe_load(fs.cat(f"{root}/config.yaml"))
    config["export"]["formats"] = ["lora", "gguf"]  # one format fewer, in the prepared folder's config
    fs.pipe(f"{root}/config.yaml", yaml.safe_dump(config).encode())
    code, out = run("runtime4")
    assert code == 0, out[-4000:]
    assert "settings changed since stage export ran (export.formats" in out
    assert verify(f"{url}/export") == [], "the bucket's export verifies after a re-export with a format fewer"
    assert not any(k.startswith("export/merged/") for k in objects(root)), "what the run removed left the bucket"

    code, out = run("runtime5")  # nothing new to do
    assert code == 0 and "nothing to resume" in out, out[-3000:]
    idle_bytes = figures[-1][3]
    assert idle_bytes < 1 << 20, f"an execution with nothing new sent {idle_bytes} bytes"

    finished = tmp_path / "runtime5" / "s"
    prepared_only = {"00_driver.ipynb", "prepared.json"}  # the prepared folder's own, never part of a run folder
    assert set(objects(root)) - local_files(finished) <= prepared_only, set(objects(root)) - local_files(finished)

    fresh = tmp_path / "runtime6" / "s"
    restore(fs, root, fresh)
    for rel in ("summary.json", "results/evaluate.json", "export/manifest.json", "export/evaluation.json"):
        assert (fresh / rel).read_bytes() == fs.cat(f"{root}/{rel}"), rel
    assert verify(fresh / "export") == [] and json.loads((fresh / "summary.json").read_text())["status"] == "ok"

    for folder in [tmp_path / f"runtime{i}" for i in range(1, 7)]:
        for p in folder.rglob("*"):
            assert not p.is_file() or SECRET.encode() not in p.read_bytes(), p
    for rel in objects(root):
        assert SECRET.encode() not in fs.cat(f"{root}/{rel}"), rel
    with capsys.disabled():
        print("\nexecution | exit | seconds | bytes sent")
        for name, code, seconds, sent in figures:
            print(f"{name} | {'killed' if code is None else code} | {seconds} | {sent}")
        print(f"bucket export verify: {verify(f'{url}/export') or 'ok'}")
