"""The six notebooks chain through runner.py on a tiny model with an rl: section; a kill -9 of the reinforce kernel
fails the run, and --resume continues GRPO from its checkpoint, then exports the RL adapter and evaluates it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, tiny_params, write_jsonl
from rl_helpers import mcq

SIX = ["setup", "preprocess", "train", "reinforce", "export", "evaluate"]


def kernel_pid(run, stage: str) -> int:
    starts = [json.loads(x) for x in (run / "memory.jsonl").read_text().splitlines()
              if f'"stage": "{stage}"' in x and '"event": "start"' in x]
    return starts[-1]["kernel_pid"]


@pytest.mark.slow  # five kernels and a resume: 3 to 6 minutes on 2 CPU cores
def test_a_kill_during_the_reinforce_stage_and_resume(tmp_path, tiny_model_dir, sample_data):
    items = write_jsonl(tmp_path / "rl.jsonl", [mcq(i, "B") for i in range(8)])
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data,
                         rl={"source": str(items), "num_generations": 2, "prompts_per_step": 2,
                             "max_completion_length": 4, "max_steps": 16, "save_steps": 2, "learning_rate": 1e-3,
                             "gradient_checkpointing": False})
    reports, run = tmp_path / "reports", tmp_path / "reports" / "rl"
    cmd = [sys.executable, str(ROOT / "runner.py")]
    first = subprocess.Popen([*cmd, str(params), "--reports-dir", str(reports), "--run-id", "rl"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = run / "rl_checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 900
    while not checkpoint.is_file():
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "no GRPO checkpoint within 15 minutes"
        time.sleep(0.2)
    os.kill(kernel_pid(run, "reinforce"), signal.SIGKILL)  # a Colab disconnect, the OOM killer
    out = first.communicate(timeout=600)[0]
    assert first.returncode == 1, out[-3000:]
    assert "=== reinforce: failed" in out and "[run 1/1 rl | stage 4/6 reinforce" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and [s["name"] for s in summary["stages"]] == SIX[:4]

    again = subprocess.run([*cmd, "--resume", "rl", "--reports-dir", str(reports)], cwd=ROOT, capture_output=True,
                           text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming at stage reinforce" in again.stdout
    rl = json.loads(run.joinpath("results", "reinforce.json").read_text())
    assert rl["resumed_from"] and int(rl["resumed_from"].rsplit("-", 1)[1]) >= 2, rl["resumed_from"]
    assert rl["steps"] == 16 and [r["step"] for r in rl["rows"]] == list(range(1, 17))
    assert rl["started_from"].startswith("the train stage's adapter") and "answers" in rl
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and [s["name"] for s in summary["stages"]] == SIX
    assert summary["reinforce"]["steps"] == 16
    assert json.loads(run.joinpath("results", "export.json").read_text())["adapter_source"] == "reinforce"
    assert run.joinpath("results", "evaluate.json").is_file()
    html = (run / "report.html").read_text()
    assert html.index("Stage: train") < html.index("Stage: reinforce") < html.index("Stage: export")
    assert "All six notebooks" in (run / "summary.md").read_text()
    assert any(json.loads(x)["stage"] == "reinforce" and json.loads(x)["event"] == "adapter saved"
               for x in (run / "memory.jsonl").read_text().splitlines())
