"""The train stage's kernel started ahead (medqlora/run/warm.py): used when its imports succeed, set aside with the
reason when they fail, never started where nothing would be gained, and never left running."""

import pytest

from medqlora.core.rundir import RunDir
from medqlora.run import stages as S
from medqlora.run.warm import WarmKernel


def test_a_warm_kernel_whose_imports_fail_is_stopped_and_the_reason_kept(tmp_path):
    said = []
    k = WarmKernel("no-such-stage", "preprocess", "python3", str(tmp_path), said.append)
    pid = k.km.provisioner.pid if k.km.provisioner else None
    assert k.take(timeout=120) is None
    assert said and "KeyError" in said[0] and "starts a kernel of its own" in said[0]
    import psutil

    assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_warm_kernel_that_imports_hands_over_a_live_kernel(tmp_path):
    k = WarmKernel("train", "preprocess", "python3", str(tmp_path), print)
    try:
        km = k.take(timeout=300)
        assert km is not None
        from jupyter_core.utils import run_sync

        assert run_sync(km.is_alive)()
    finally:
        k.shutdown()
    assert not run_sync(km.is_alive)()


@pytest.mark.parametrize("stage,stages,env,gguf,colab", [
    ("setup", ["setup", "preprocess", "train"], "1", "model.Q8_0.gguf", False),  # setup dequantizes the GGUF
    ("setup", ["setup", "train"], "1", None, True),  # on Colab setup installs what is missing (here: Unsloth)
    ("preprocess", ["preprocess", "export"], "1", None, False),  # no train to come
    ("preprocess", ["preprocess"], "1", None, False),
    ("train", ["preprocess", "train"], "1", None, False),  # only train is warmed, while setup or preprocess runs
    ("setup", ["setup", "export", "train"], "1", None, False),  # not pipeline order, but never across a GPU stage
    ("preprocess", ["preprocess", "train"], "0", None, False),  # MEDQLORA_WARM_KERNEL=0 turns it off
])
def test_no_warm_kernel_where_it_would_gain_nothing_or_be_unsafe(tmp_path, monkeypatch, stage, stages, env, gguf,
                                                                 colab):
    monkeypatch.setenv("MEDQLORA_WARM_KERNEL", env)
    if colab:
        monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    started = []
    monkeypatch.setattr("medqlora.run.warm.WarmKernel", lambda *a: started.append(a) or "kernel")
    assert S.start_warm(stage, stages, RunDir(tmp_path), gguf_file=gguf) is None and not started


def test_the_train_kernel_starts_with_setup_where_setup_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("COLAB_GPU", raising=False)
    monkeypatch.setattr("medqlora.run.warm.WarmKernel", lambda *a: a)
    args = S.start_warm("setup", ["setup", "preprocess", "train", "export"], RunDir(tmp_path))
    assert args[:2] == ("train", "setup")
