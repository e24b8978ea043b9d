import json

from medqlora.export import MANIFEST, build_manifest, copy_to, verify
from medqlora.rundir import write_json


def make_folder(tmp_path):
    d = tmp_path / "export"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00weights" * 1000)
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 8}))
    write_json(d / MANIFEST, build_manifest(d))
    return d


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    d = make_folder(tmp_path)
    m = json.loads((d / MANIFEST).read_text())["files"]
    assert set(m) == {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}
    assert m["adapter/adapter_model.safetensors"]["bytes"] == 8000
    assert len(m["adapter/adapter_config.json"]["sha256"]) == 64
    assert verify(d) == []


def test_verify_detects_changed_missing_and_resized_files(tmp_path):
    d = make_folder(tmp_path)
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 9}))  # same size, other bytes
    assert verify(d) == ["checksum differs: adapter/adapter_config.json"]
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"short")
    assert "size differs: adapter/adapter_model.safetensors (5 != 8000)" in verify(d)
    (d / "adapter" / "adapter_model.safetensors").unlink()
    assert "missing: adapter/adapter_model.safetensors" in verify(d)
    assert verify(tmp_path) == [f"no {MANIFEST} in {tmp_path}"]


def test_copy_to_fsspec_destination_reads_back(tmp_path):
    d = make_folder(tmp_path)
    out = copy_to(d, "memory://bucket/run1")
    assert out == {"url": "memory://bucket/run1", "files": 2, "verified": True}
    local = copy_to(d, str(tmp_path / "dest"))
    assert local["verified"] and verify(tmp_path / "dest") == []


def test_verify_command_exit_codes(tmp_path):
    import subprocess
    import sys

    d = make_folder(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "medqlora.export", "verify", str(d)], capture_output=True, text=True)
    assert ok.returncode == 0 and "verified" in ok.stdout
    (d / "adapter" / "adapter_config.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "medqlora.export", "verify", str(d)], capture_output=True, text=True)
    assert bad.returncode == 1 and "size differs" in bad.stdout
