"""The Colab Enterprise path as a fresh runtime meets it (slow): the wheel built from this checkout, installed into a
venv that has nothing else of the project, prepares a run in gs:// (a GCS API server, tests/conftest.py), and the
prepared driver, executed with papermill in folders that are not the clone, is killed after a checkpoint went up and
resumed by a second execution in a new empty folder. And the README's Colab cells, run in the same kind of venv.

The venv sees the heavy stack already installed here (torch, transformers, ...) through a folder of links to this
environment's site-packages with medqlora's own entries left out, so nothing is downloaded and medqlora can only
come from the wheel (checked: its module file and sys.path). Measured 2026-12-01 on 2 CPU cores under heavy load
(load average about 13): 700 s for the kill-and-resume test (the tiny model's steps took 7-14 s there), 37 s for the
README cells."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, gcs, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    from medqlora.run.colab import build_wheel

    return build_wheel(tmp_path_factory.mktemp("dist"))


def fresh_venv(where: Path) -> Path:
    """A venv without medqlora that sees this environment's other packages (links, medqlora's entries left out)."""
    import sysconfig

    base = Path(sysconfig.get_paths()["purelib"])
    shadow = where / "base-stack"
    shadow.mkdir(parents=True)
    for entry in base.iterdir():
        if not re.match(r"(__editable__.*|medqlora.*|.*\.pth)$", entry.name):
            (shadow / entry.name).symlink_to(entry)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                  "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (target / "_base_stack.pth").write_text(str(shadow) + "\n")
    # nbconvert's templates are data files in the environment's share/ (pip puts them under the venv's prefix)
    (venv / "share" / "jupyter").mkdir(parents=True)
    (venv / "share" / "jupyter" / "nbconvert").symlink_to(Path(sys.prefix) / "share" / "jupyter" / "nbconvert")
    return venv


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDQLORA_KERNEL", "MEDQLORA_NOTEBOOK_DIR",
                                                            "VIRTUAL_ENV", "JUPYTER_PATH")}
    env.update(GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", PYTHONUNBUFFERED="1", **extra)
    return env


def run(cmd, cwd, timeout=600, **env):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def install(venv: Path, requirement: str, cwd: Path, *flags: str) -> None:
    """pip (this environment's) into the venv; --no-index: every dependency must already be satisfied."""
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-index", *flags,
         requirement], cwd)


def assert_only_from(venv: Path, cwd: Path) -> None:
    out = run([venv / "bin" / "python", "-c", "import json, sys, medqlora; print(json.dumps([medqlora.__file__, "
               "sys.path]))"], cwd)
    module, path = json.loads(out.strip().splitlines()[-1])
    assert module.startswith(str(venv)), module
    assert not [p for p in path if p and (p.startswith(str(ROOT)) or p.startswith("/work/main"))], path


def execute_driver(venv: Path, gs_run: str, folder: Path, kill_when=None, timeout=900):
    """Colab Enterprise's part: the driver notebook copied from the bucket and executed with papermill in `folder`.
    kill_when(fs, root) -> bool: poll the bucket and kill -9 papermill and every kernel under it when it is true."""
    import psutil

    folder.mkdir(parents=True)
    fs, root = gcs(), gs_run.removeprefix("gs://")
    fs.get_file(f"{root}/00_driver.ipynb", str(folder / "00_driver.ipynb"))
    cmd = [str(venv / "bin" / "python"), "-m", "papermill", "00_driver.ipynb", "executed.ipynb", "-p", "local_reports",
           str(folder / "content"), "-p", "sync_seconds", "1", "--no-progress-bar"]
    log = open(folder / "papermill.log", "w")
    proc = subprocess.Popen(cmd, cwd=folder, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.5)
        if kill_when and kill_when(gcs(), root):
            tree = [proc, *psutil.Process(proc.pid).children(recursive=True)]  # kernels run in sessions of their own
            for p in tree:
                p.kill()
            proc.wait()
            return "killed", time.time() - t0
    if proc.poll() is None:
        proc.kill()
        pytest.fail(f"the driver ran past {timeout} s: {(folder / 'papermill.log').read_text()[-3000:]}")
    return proc.returncode, time.time() - t0


def test_wheel_in_a_fresh_venv_prepares_to_gcs_and_a_killed_execution_resumes(tmp_path, wheel, tiny_model_dir,
                                                                              sample_data, gs_folder):
    venv = fresh_venv(tmp_path / "env")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    install(venv, str(wheel), elsewhere)
    assert_only_from(venv, elsewhere)
    # 16 rows, 4 per step: 24 steps, a checkpoint every 2; the first execution is killed once one is in the bucket
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, train={"epochs": 6, "save_steps": 2,
                                                                        "logging_steps": 2, "save_total_limit": 2})
    out = run([venv / "bin" / "medqlora", params, "--prepare-only", "--reports-dir", gs_folder, "--run-id", "w1"],
              elsewhere, MEDQLORA_PROJECT_SOURCE=str(wheel))
    gs_run = f"{gs_folder}/w1"
    assert f"prepared {params}: {gs_run}" in out

    def checkpoint_up(fs, root):
        fs.invalidate_cache()
        return any(p.endswith("/trainer_state.json") for p in fs.find(f"{root}/checkpoints"))

    first, s1 = execute_driver(venv, gs_run, tmp_path / "runtime1", kill_when=checkpoint_up)
    assert first == "killed", f"the first execution ended ({first}) before it could be killed"
    fs, root = gcs(), gs_run.removeprefix("gs://")
    assert not fs.exists(f"{root}/results/train.json"), "killed during training"
    steps = [int(m) for m in re.findall(r"checkpoints/checkpoint-(\d+)/trainer_state\.json", " ".join(
        fs.find(f"{root}/checkpoints")))]
    assert steps, "a complete checkpoint is in the bucket"
    code, s2 = execute_driver(venv, gs_run, tmp_path / "runtime2")
    assert code == 0, (tmp_path / "runtime2" / "papermill.log").read_text()[-4000:]
    fs.invalidate_cache()
    summary = json.loads(fs.cat(f"{root}/summary.json"))
    assert summary["run_id"] == "w1" and summary["status"] == "ok", summary
    train = json.loads(fs.cat(f"{root}/results/train.json"))
    resumed_at = int(train["resumed_from"].rsplit("-", 1)[-1])
    assert resumed_at >= max(steps) and train["steps"] == 24
    assert train["sessions"]["this_session_steps"] == 24 - resumed_at, "the steps before the checkpoint not redone"
    for name in ("01_setup", "02_preprocess", "03_train", "04_export", "05_evaluate"):
        nb = json.loads(fs.cat(f"{root}/{name}.ipynb"))
        assert any(c.get("outputs") for c in nb["cells"]), f"{name} in the bucket is the executed notebook"
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"], name
    assert f"resuming from {tmp_path / 'runtime2' / 'content' / 'w1' / 'checkpoints'}" in \
        fs.cat(f"{root}/03_train.ipynb").decode()
    assert "Stage: evaluate" in fs.cat(f"{root}/report.html").decode()
    verified = run([venv / "bin" / "python", "-m", "medqlora.export", "verify", f"{gs_run}/export"], elsewhere)
    assert "verified: every file matches manifest.json" in verified
    env = json.loads(fs.cat(f"{root}/environment.json"))
    assert env["command"][0].startswith(str(venv)), "the chain ran in the fresh venv's kernels"
    print(f"first execution killed after {s1:.0f} s (checkpoints {steps}); second {s2:.0f} s from checkpoint "
          f"{resumed_at}")
    # a third execution of the finished run does nothing
    code, _ = execute_driver(venv, gs_run, tmp_path / "runtime3")
    assert code == 0 and "nothing to resume" in (tmp_path / "runtime3" / "executed.ipynb").read_text()


def readme_colab_cells() -> list[str]:
    """The README's Colab cells: the code block after the '<!-- colab-cells -->' marker."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- colab-cells -->", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]


def test_readme_colab_cells_run_in_a_fresh_venv(tmp_path):
    """The cells as written, with what a CPU machine without a network must change: the clone comes from this
    checkout's committed HEAD instead of GitHub, the GPU extra is left out, and the run is the offline default's
    --check (the GPU params need the hub). What is not run: a Colab runtime, Unsloth, the GPU extra's install."""
    cells = readme_colab_cells()
    assert cells[0].startswith("!git clone") and cells[1].startswith("%cd") and cells[2].startswith("%pip install")
    venv = fresh_venv(tmp_path / "env")
    content = tmp_path / "content"
    content.mkdir()
    clone_url = re.search(r"https://\S+", cells[0]).group(0)
    run(["git", "clone", "-q", ROOT, content / "medqlora"], content)  # for clone_url
    assert clone_url.endswith("/medqlora")
    cwd = Path(cells[1].split(None, 1)[1].replace("/content", str(content)))
    pip = cells[2].split("%pip install", 1)[1].split("#")[0].split()
    assert pip[-1] == '".[gpu]"' and pip[0] == "-q"
    install(venv, ".", cwd, "--no-build-isolation")
    assert_only_from(venv, tmp_path)
    runner = cells[3].split("!python", 1)[1].split("#")[0].split()
    assert runner[0] == "runner.py" and (cwd / runner[1]).is_file(), runner
    out = run([venv / "bin" / "python", "runner.py", "--check"], cwd)
    assert "params/default.yaml: valid" in out
