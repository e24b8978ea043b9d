"""What a batch says of its runs and cards must be true (issue 28): --gpus picks among the cards the runner itself may
use (its own CUDA_VISIBLE_DEVICES), and a --fail-fast batch lists the runs it never started."""
import json
import sys

import nbformat
import pytest
from conftest import tiny_params

from medqlora.config import ConfigError
from medqlora.core.rundir import NOTEBOOKS
from medqlora.run import batch
from medqlora.run import cli as runner


def test_gpus_are_indices_into_the_runners_own_visible_cards(monkeypatch):
    """Under SLURM or on a shared host the runner gets CUDA_VISIBLE_DEVICES=2,3; --gpus 0,1 ran the children on
    cards 0 and 1, someone else's."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert batch.gpu_ids("0,1") == ["2", "3"]
    assert batch.gpu_ids("1") == ["3"]
    assert batch.gpu_ids("all") == ["2", "3"]
    with pytest.raises(ConfigError, match=r"--gpus 2: .*2 cards.*CUDA_VISIBLE_DEVICES=2,3.*0,1"):
        batch.gpu_ids("2")
    with pytest.raises(ConfigError, match="more than once"):
        batch.gpu_ids("0,0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa, GPU-bbbb")  # UUIDs (or MIG ids) pass through as given
    assert batch.gpu_ids("1") == ["GPU-bbbb"] and batch.gpu_ids("all") == ["GPU-aaaa", "GPU-bbbb"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="no card is visible"):
        batch.gpu_ids("0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert batch.gpu_ids("0,1") == ["0", "1"], "nothing set: the indices are the machine's cards"


def test_each_child_gets_the_card_it_was_mapped_to(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    codes = batch.run_on_gpus([("a", show, tmp_path / "a.log"), ("b", show, tmp_path / "b.log")],
                              batch.gpu_ids("0,1"))
    assert codes == {"a": 0, "b": 0}
    assert (tmp_path / "a.log").read_text().strip() == "5" and (tmp_path / "b.log").read_text().strip() == "7"


def fake_stages(monkeypatch, fail: str):
    def fake_stage(stage, run, verbose=False, warm=None):
        (run / NOTEBOOKS[stage]).write_text(nbformat.writes(nbformat.v4.new_notebook()))
        if run.path.name.startswith(fail) and stage == "train":
            return "failed", 0.1, "RuntimeError: boom"
        return "ok", 0.1, None

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    monkeypatch.setattr(runner, "start_warm", lambda *a, **k: None)
    monkeypatch.setattr(batch, "compare_report", lambda folders, out: out / "compare.html")  # tested elsewhere


def three_params(tmp_path, tiny_model_dir, sample_data) -> list[str]:
    out = []
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
        p = tiny_params(tmp_path / name, tiny_model_dir, *sample_data)
        p.write_text(p.read_text().replace("run_name: tiny", f"run_name: {name}"))
        out.append(str(p))
    return out


def test_a_fail_fast_batch_lists_the_runs_it_never_started(tmp_path, monkeypatch, tiny_model_dir, sample_data):
    """batch.md said 'Batch of 1 runs' for three params files."""
    fake_stages(monkeypatch, fail="one")
    params = three_params(tmp_path, tiny_model_dir, sample_data)
    reports = tmp_path / "reports"
    assert runner.main(params + ["--reports-dir", str(reports), "--fail-fast"]) == 1
    out = next(reports.glob("batch-*"))
    info = json.loads((out / "batch.json").read_text())
    assert [r["status"] for r in info["runs"]] == ["failed", "not started", "not started"]
    assert info["exit_codes"] == [1, None, None]
    md = (out / "batch.md").read_text()
    assert md.startswith("# Batch of 3 runs: 0 succeeded, 1 failed, 2 not started (--fail-fast)"), md
    for p in params[1:]:
        assert p in md, f"{p}, never started, is not in batch.md"


def test_a_fail_fast_gpus_batch_says_the_same(tmp_path, monkeypatch, tiny_model_dir, sample_data):
    fake_stages(monkeypatch, fail="one")

    def in_process_queue(commands, gpus, tick=None, fail_fast=False):  # each child runner, one after another here
        codes = {}
        for name, command, _ in commands:
            codes[name] = runner.main(command[2:])
            if fail_fast and codes[name]:
                break
        return codes

    monkeypatch.setattr(batch, "run_on_gpus", in_process_queue)
    params = three_params(tmp_path, tiny_model_dir, sample_data)
    reports = tmp_path / "reports"
    assert runner.main(params + ["--reports-dir", str(reports), "--fail-fast", "--gpus", "0"]) == 1
    out = next(reports.glob("batch-*"))
    assert [r["status"] for r in json.loads((out / "batch.json").read_text())["runs"]] == \
        ["failed", "not started", "not started"]
    assert (out / "batch.md").read_text().startswith("# Batch of 3 runs: 0 succeeded, 1 failed, 2 not started")
