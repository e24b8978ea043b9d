"""memory.jsonl survives a full disk (issue 28, point 5): a torn last line is skipped with a note, the next record
starts on a line of its own, and a write that hits ENOSPC fails with a message naming the folder."""
import errno
import json
import os

import pytest

from medqlora.core import jsonl_log
from medqlora.core import memory_log
from medqlora.core.rundir import RunDir


def test_a_torn_last_line_is_skipped_with_a_note_and_the_next_record_starts_its_own_line(tmp_path):
    run = RunDir(tmp_path / "run")
    memory_log.record(run, "train", "start")
    with open(run.path / "memory.jsonl", "a") as f:  # what a write cut by a full disk or a kill leaves
        f.write('{"time": 1.0, "stage": "train", "ev')
    with pytest.warns(UserWarning, match=r"memory.jsonl: line 2 is not a whole record .* skipped"):
        assert [r["event"] for r in memory_log.read_records(run)] == ["start"]
    with pytest.warns(UserWarning):
        assert set(memory_log.peaks_by_stage(run)) == {"train"}
    memory_log.record(run, "evaluate", "start")  # space freed, the run resumed
    with pytest.warns(UserWarning, match="line 2"):
        assert [r["stage"] for r in memory_log.read_records(run)] == ["train", "evaluate"]


def test_a_full_disk_fails_with_the_folder_named_and_leaves_the_file_whole(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    memory_log.record(run, "train", "start")
    before = (run.path / "memory.jsonl").read_bytes()
    real = os.write

    def full_disk(fd, data):  # a few bytes go out, then the disk is full
        real(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonl_log, "_write", full_disk)
    with pytest.raises(OSError, match=rf"no space left on the disk holding {run.path}.*free space.*--resume") as e:
        memory_log.record(run, "train", "LoRA added")
    assert e.value.errno == errno.ENOSPC
    assert (run.path / "memory.jsonl").read_bytes() == before, "the torn part is cut off again"
    monkeypatch.undo()
    memory_log.record(run, "train", "LoRA added")
    lines = (run.path / "memory.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["start", "LoRA added"]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(fd, data):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(jsonl_log, "_write", denied)
    with pytest.raises(PermissionError) as e:
        jsonl_log.append(tmp_path / "x.jsonl", {"a": 1})
    assert "no space" not in str(e.value)
