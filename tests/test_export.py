import json

from medqlora.core.rundir import write_json
from medqlora.export.exporter import MANIFEST, build_manifest, copy_to, verify


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


def test_verify_detects_changed_missing_resized_and_extra_files(tmp_path):
    d = make_folder(tmp_path)
    (d / "adapter" / "notes.txt").write_text("added after the export")
    assert verify(d) == ["extra: adapter/notes.txt (not in the manifest)"]
    (d / "adapter" / "notes.txt").unlink()
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 9}))  # same size, other bytes
    assert verify(d) == ["checksum differs: adapter/adapter_config.json"]
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"short")
    assert "size differs: adapter/adapter_model.safetensors (5 != 8000)" in verify(d)
    (d / "adapter" / "adapter_model.safetensors").unlink()
    assert "missing: adapter/adapter_model.safetensors" in verify(d)
    assert verify(tmp_path) == [f"no {MANIFEST} in {tmp_path}"]


def test_copy_to_fsspec_destination_reads_back_and_writes_the_manifest_last(tmp_path):
    import fsspec
    import pytest

    d = make_folder(tmp_path)
    out = copy_to(d, "memory://bucket/run1")
    assert out == {"url": "memory://bucket/run1", "files": 2, "verified": True}
    assert verify("memory://bucket/run1") == [], "verify works on a remote copy"
    fs = fsspec.filesystem("memory")
    with fs.open("/bucket/run1/adapter/adapter_config.json", "wb") as f:
        f.write(b'{"r": 9}')  # same size, another byte
    assert verify("memory://bucket/run1") == ["checksum differs: adapter/adapter_config.json"]
    local = copy_to(d, str(tmp_path / "dest"))
    assert local["verified"] and verify(tmp_path / "dest") == []
    # a copy interrupted before the manifest never looks complete
    real_put = fs.put_file

    def failing_put(src, dst, **kw):
        if dst.endswith("adapter_model.safetensors"):
            raise OSError("connection reset")
        return real_put(src, dst, **kw)

    fs.put_file = failing_put
    try:
        with pytest.raises(OSError):
            copy_to(d, "memory://bucket/run2")
    finally:
        fs.put_file = real_put
    assert not fs.exists("/bucket/run2/manifest.json") and verify("memory://bucket/run2")[0].startswith("no manifest")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "old.bin").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="holds files that are not part of this export"):
        copy_to(d, str(tmp_path / "other"))


def test_zip_holds_the_export_with_its_manifest(tmp_path):
    import zipfile

    from medqlora.core.rundir import RunDir
    from medqlora.export.exporter import make_zip

    make_folder(tmp_path)
    z = make_zip(RunDir(tmp_path))
    names = set(zipfile.ZipFile(z["path"]).namelist())
    assert {"export/manifest.json", "export/adapter/adapter_model.safetensors",
            "export/adapter/adapter_config.json"} <= names and z["bytes"] > 0


def test_verify_command_exit_codes(tmp_path):
    import subprocess
    import sys

    d = make_folder(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "medqlora.export", "verify", str(d)], capture_output=True, text=True)
    assert ok.returncode == 0 and "verified" in ok.stdout
    (d / "adapter" / "adapter_config.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "medqlora.export", "verify", str(d)], capture_output=True, text=True)
    assert bad.returncode == 1 and "size differs" in bad.stdout
