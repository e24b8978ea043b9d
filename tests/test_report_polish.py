"""What the report's tables and cells show: numbers formatted for reading, library progress bars kept out."""
import sys

from medqlora.core.system import human_size, human_value
from medqlora.run import notebook


def test_integers_and_sizes_read_as_such():
    table = notebook.kv_table({"rows": 240.0, "examples": 12345, "share": 0.123456, "adapter_bytes": 1536,
                               "nested": {"file_bytes": 98 * 1024**2, "flag": True}, "none": None}).data["value"]
    assert table["rows"] == "240" and table["examples"] == "12,345" and table["share"] == "0.1235"
    assert table["adapter_bytes"] == "1.50 KiB" and table["nested.file_bytes"] == "98.0 MiB"
    assert table["nested.flag"] == "True" and table["none"] == ""
    assert [human_size(b) for b in (0, 900, 5 * 1024**2, 3 * 1024**3)] == ["0 B", "900 B", "5.00 MiB", "3.00 GiB"]
    assert human_value("n", 3) == "3" and human_value("x", "text") == "text"


def test_library_progress_bars_go_to_run_log_not_the_notebook(tmp_path, monkeypatch):
    """In a kernel sys.stderr is the cell's stderr stream (a red block in the report), and ipykernel forwards the
    process's file descriptor 2 there too: the bars are written into the run folder's run.log."""
    import io

    from tqdm import tqdm

    log = tmp_path / "run.log"
    notebook.progress_bars_to_log(log)
    notebook.progress_bars_to_log(log)  # idempotent: wrapped once, one file
    cell = io.StringIO()
    monkeypatch.setattr(sys, "stderr", cell)
    for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    assert cell.getvalue() == ""
    assert "Converting and de-quantizing" in log.read_text()
    explicit = io.StringIO()
    for _ in tqdm(range(2), desc="mine", file=explicit):  # a bar given its own file keeps it
        pass
    assert "mine" in explicit.getvalue() and "mine" not in log.read_text()
