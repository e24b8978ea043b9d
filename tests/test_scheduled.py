"""Scheduled Colab Enterprise runs (issue 27), against a GCS API server (conftest: gcs_server): a restore changes no
file, the bucket mirrors the run folder (removals too), an execution with nothing new sends nothing, a re-created or
cut-off checkpoint is never taken as complete, URL credentials are refused, and a run's status follows its stages.
The whole path with real stages and kills: tests/test_scheduled_e2e.py."""
import json
import shutil

import pytest
import yaml
from conftest import gcs, tiny_params

from medqlora.core.rundir import NOTEBOOKS
from medqlora.export.manifest import MANIFEST, build_manifest, verify
from medqlora.run import cli as runner
from medqlora.run.remote import RunSync, restore


def bucket(url: str) -> dict[str, bytes]:
    fs, root = gcs(), url.removeprefix("gs://")
    return {p[len(root) + 1:]: fs.cat(p) for p in fs.find(root)}


def sync(run, url) -> RunSync:
    fs = gcs()
    return RunSync(run, fs, url.removeprefix("gs://"))


def run_folder(path):
    """A finished-looking run folder whose export (with its manifest) records the folder's own absolute path, as
    exports made before paths were stored relative to the run do."""
    (path / "results").mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"run_id": "r", "run_dir": str(path), "stages": []}))  # an old one
    (path / "results" / "train.json").write_text(json.dumps({"adapter_dir": "adapter"}))
    exp = path / "export"
    (exp / "adapter").mkdir(parents=True)
    (exp / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(path / "inputs/m")}))
    (exp / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 100)
    (exp / "training_metadata.json").write_text(json.dumps({"run_dir": str(path)}))
    (exp / MANIFEST).write_text(json.dumps(build_manifest(exp, {"run_name": "r", "run_id": "r"})))
    ck = path / "checkpoints" / "checkpoint-2"
    ck.mkdir(parents=True)
    (ck / "adapter_model.safetensors").write_bytes(b"a" * 64)
    (ck / "trainer_state.json").write_text('{"global_step": 2}')
    return path


def test_a_restore_into_a_new_folder_changes_no_file_and_the_export_still_verifies(tmp_path, gs_folder):
    """Before: restore rewrote the old folder's path in every *.json, the export's too, so the evaluate stage found
    `checksum differs: adapter/adapter_config.json; checksum differs: training_metadata.json` in every execution."""
    first = run_folder(tmp_path / "runtime1" / "r")
    url = f"{gs_folder}/r"
    sync(first, url).upload()
    new = tmp_path / "runtime2" / "r"
    restore(gcs(), url.removeprefix("gs://"), new)
    for rel, data in bucket(url).items():
        assert (new / rel).read_bytes() == data, f"{rel} was changed on restore"
    assert verify(new / "export") == []


def test_the_bucket_drops_what_the_run_removed_and_never_holds_an_export_being_assembled(tmp_path, gs_folder):
    run = run_folder(tmp_path / "r")
    (run / "export" / "merged").mkdir()
    (run / "export" / "merged" / "model.safetensors").write_bytes(b"m" * 50)
    (run / "export.tmp" / "merged").mkdir(parents=True)
    (run / "export.tmp" / "merged" / "model.safetensors").write_bytes(b"m" * 50)  # the export being assembled
    exp = run / "export"
    (exp / MANIFEST).write_text(json.dumps(build_manifest(exp, {"run_name": "r", "run_id": "r"})))
    url = f"{gs_folder}/r"
    s = sync(run, url)
    s.upload()
    assert not any(k.startswith("export.tmp/") for k in bucket(url)), "a transient folder never goes up"
    # a re-export with one format fewer
    shutil.rmtree(exp / "merged")
    shutil.rmtree(run / "export.tmp")
    (exp / MANIFEST).write_text(json.dumps(build_manifest(exp, {"run_name": "r", "run_id": "r"})))
    s.upload()
    assert verify(f"{url}/export") == [], "no stale file is left beside the bucket's export"
    assert not any(k.startswith("export/merged") for k in bucket(url))
    # the prepared folder's own files are never removed
    gcs().pipe(f"{url.removeprefix('gs://')}/00_driver.ipynb", b"{}")
    gcs().pipe(f"{url.removeprefix('gs://')}/inputs/train.jsonl", b"{}")
    s.upload()
    assert {"00_driver.ipynb", "inputs/train.jsonl"} <= set(bucket(url))


def test_an_execution_with_nothing_new_sends_nothing_also_after_a_restore(tmp_path, gs_folder):
    """Before: what was sent lived in memory only, so every new process (the final upload, the first after a
    restore) sent the whole folder again."""
    run = run_folder(tmp_path / "runtime1" / "r")
    url = f"{gs_folder}/r"
    assert sync(run, url).upload() > 0
    again = sync(run, url)
    assert again.upload() == 0 and again.bytes == 0, "a new process: nothing changed, nothing sent"
    new = tmp_path / "runtime2" / "r"
    restore(gcs(), url.removeprefix("gs://"), new)
    after = sync(new, url)
    assert after.upload() == 0 and after.bytes == 0, "after a restore: nothing changed, nothing sent"
    (new / "summary.json").write_text(json.dumps({"run_id": "r", "stages": [], "status": "ok"}))
    assert after.upload() == 1 and bucket(url)["summary.json"] == (new / "summary.json").read_bytes()
    # a file changed in the bucket behind the run's back is sent again
    gcs().pipe(f"{url.removeprefix('gs://')}/results/train.json", b"{}")
    assert sync(new, url).upload() == 1 and bucket(url)["results/train.json"] == b'{"adapter_dir": "adapter"}'


def test_a_re_created_checkpoint_with_the_same_sizes_is_sent_again(tmp_path, gs_folder):
    """Before: the bucket's sizes were cached and never refreshed, so checkpoint-2 of a run started over (same name,
    same sizes) was taken as uploaded, and the bucket kept the old run's weights."""
    run = run_folder(tmp_path / "r")
    url = f"{gs_folder}/r"
    sync(run, url).upload()
    ck = run / "checkpoints" / "checkpoint-2"
    shutil.rmtree(ck)
    ck.mkdir()
    (ck / "adapter_model.safetensors").write_bytes(b"b" * 64)  # new weights, same size
    (ck / "trainer_state.json").write_text('{"global_step": 3}'[:19])
    sync(run, url).upload()
    b = bucket(url)
    assert b["checkpoints/checkpoint-2/adapter_model.safetensors"] == b"b" * 64
    assert b["checkpoints/checkpoint-2/trainer_state.json"] == (ck / "trainer_state.json").read_bytes()


def test_a_checkpoint_whose_upload_was_cut_off_is_never_restored_as_complete(tmp_path, gs_folder, monkeypatch):
    """Re-sending a checkpoint first removes its trainer_state.json from the bucket: an upload cut off half way
    leaves it incomplete, not the old state over new (or missing) weights. A bucket checkpoint with a state but no
    weights is skipped on restore."""
    from medqlora.run import remote

    run = run_folder(tmp_path / "r")
    url = f"{gs_folder}/r"
    sync(run, url).upload()
    (run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"c" * 64)
    real = remote._put

    def cut(fs, local, target):
        if "checkpoint-2" in target:
            raise OSError("runtime killed")
        real(fs, local, target)

    monkeypatch.setattr(remote, "_put", cut)
    with pytest.raises(OSError):
        sync(run, url).upload()
    monkeypatch.setattr(remote, "_put", real)
    assert "checkpoints/checkpoint-2/trainer_state.json" not in bucket(url)
    new = tmp_path / "restored"
    notes = restore(gcs(), url.removeprefix("gs://"), new)
    assert not (new / "checkpoints" / "checkpoint-2").exists() and any("partial checkpoint" in n for n in notes)
    # a hollow one: a state and no weights
    root = url.removeprefix("gs://")
    gcs().rm(f"{root}/checkpoints/checkpoint-2", recursive=True)
    gcs().pipe(f"{root}/checkpoints/checkpoint-4/trainer_state.json", b"{}")
    new2 = tmp_path / "restored2"
    restore(gcs(), root, new2)
    assert not (new2 / "checkpoints" / "checkpoint-4").exists()


SECRET = "ghp_SECRETtoken123"


@pytest.mark.parametrize("key,url", [
    ("data.source", f"https://user:{SECRET}@example.org/train.jsonl"),
    ("data.eval_source", f"https://example.org/eval.jsonl?token={SECRET}"),
    ("eval.sets[0].source", f"https://{SECRET}@example.org/bench.jsonl"),
    ("export.destination", f"https://example.org/up?X-Goog-Signature={SECRET}"),
])
def test_a_url_carrying_credentials_is_refused_naming_the_field_and_nothing_is_written(tmp_path, tiny_model_dir,
                                                                                        sample_data, key, url, capsys):
    """Before: refused for project_source only; in these fields it was used and written into config.yaml, the
    notebooks, report.html, run.log and summary.json."""
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    raw = yaml.safe_load(params.read_text())
    if key.startswith("eval.sets"):
        raw["eval"]["sets"] = [{"name": "bench", "source": url}]
    else:
        section, field = key.split(".")
        raw.setdefault(section, {})[field] = url
    params.write_text(yaml.safe_dump(raw))
    reports = tmp_path / "reports"
    assert runner.main([str(params), "--reports-dir", str(reports)]) == 2
    err = capsys.readouterr().err
    assert f"{key}: the URL carries credentials" in err and "environment" in err
    assert SECRET not in err, "the error does not repeat the secret"
    assert not reports.exists()


def test_a_resume_with_nothing_to_do_never_calls_a_failed_run_ok(tmp_path, tiny_model_dir, sample_data, monkeypatch):
    """Before: after train failed, --resume RUN --stages setup,preprocess exited 0 with summary.json status ok and
    summary.md '# RUN: ok'."""
    import nbformat

    def fake_stage(stage, run, verbose=False, warm=None):
        (run / NOTEBOOKS[stage]).write_text(nbformat.writes(nbformat.v4.new_notebook()))
        return ("failed", 0.1, "RuntimeError: killed") if stage == "train" else ("ok", 0.1, None)

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    monkeypatch.setattr(runner, "start_warm", lambda *a, **k: None)
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    reports = tmp_path / "reports"
    assert runner.main([str(params), "--reports-dir", str(reports), "--run-id", "r"]) == 1
    assert runner.main(["--resume", "r", "--reports-dir", str(reports), "--stages", "setup,preprocess"]) == 1
    s = json.loads((reports / "r" / "summary.json").read_text())
    assert s["status"] == "failed" and "stage train failed" in s["error"]
    assert (reports / "r" / "summary.md").read_text().startswith("# r: failed")
    # the stages left out of a run that failed nowhere make it partial, never ok
    assert runner.main([str(params), "--reports-dir", str(reports), "--run-id", "p", "--stages", "setup"]) == 0
    assert json.loads((reports / "p" / "summary.json").read_text())["status"] == "partial"
