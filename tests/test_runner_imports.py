"""The runner process itself never imports Unsloth: on a GPU that import takes 25 to 40 s, and only the stage
kernels that train, merge or generate need it. (The summary after each stage once imported it through the loss
history, which needs nothing of Unsloth.)"""
import subprocess
import sys
import textwrap


def test_the_runner_and_its_summary_import_no_unsloth(tmp_path):
    fake = tmp_path / "site" / "unsloth"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import sys\nsys.modules['UNSLOTH_WAS_IMPORTED'] = sys\n")
    code = textwrap.dedent("""
        import sys
        import medqlora.training.model as M
        M.cuda_available = lambda: True  # act as a GPU machine: preload_unsloth would import it now
        assert M.preload_unsloth() and 'UNSLOTH_WAS_IMPORTED' in sys.modules  # the fake is found and importable
        del sys.modules['UNSLOTH_WAS_IMPORTED'], sys.modules['unsloth']
        import pkgutil, importlib, medqlora.run
        for m in pkgutil.iter_modules(medqlora.run.__path__):
            importlib.import_module('medqlora.run.' + m.name)
        import medqlora.training.history, medqlora.training.memory_plan, medqlora.run.headline  # the summary's
        print('imported' if 'UNSLOTH_WAS_IMPORTED' in sys.modules else 'clean')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site") + ":" + str(__import__("pathlib").Path(__file__)
                                                                                   .resolve().parents[1]),
                              "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"


def test_checking_a_config_imports_no_transformers():
    """The runner checks every params file before its stages: the optimizer names come from transformers' source,
    not from importing it (10 to 20 s with torch and peft, before each run of a batch)."""
    code = textwrap.dedent("""
        import sys
        from medqlora.config.checks import _check_optimizer, optimizer_names
        assert _check_optimizer('adamw_8bit') == [] and 'did you mean adamw_8bit' in _check_optimizer('adamw8bit')[0]
        print(sorted(optimizer_names()))
        print('transformers' in sys.modules, 'torch' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names, imported = out.stdout.strip().splitlines()[-2:]
    assert imported == "False False"
    from transformers.training_args import OptimizerNames

    assert names == str(sorted(o.value for o in OptimizerNames))


def test_the_memory_preflight_reads_a_local_config_without_transformers(tmp_path, tiny_model_dir, sample_data):
    """The same refusal as before for a run that cannot fit memory.budget_gb, with config.json read as JSON."""
    from conftest import tiny_params

    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, memory={"budget_gb": 1.0})
    code = textwrap.dedent(f"""
        import sys
        from medqlora.config import load_config
        from medqlora.training.memory_plan import preflight
        problems = preflight(load_config({str(params)!r}))
        print(problems[0] if problems else 'none')
        print('transformers' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    problem, imported = out.stdout.strip().splitlines()[-2:]
    assert "memory: the run needs about" in problem and "1.0 GiB budget (memory.budget_gb)" in problem
    assert imported == "False"


def test_a_config_json_that_leaves_fields_to_its_class_defaults_is_read_as_transformers_reads_it(tmp_path):
    """Gemma's config class ties the embeddings and sets head_dim 256 (not hidden / heads) by default; a config.json
    that leaves those out must give the same shape as AutoConfig, not the reader's own defaults."""
    import json

    from transformers import AutoConfig

    from medqlora.training.memory import ModelShape, model_shape

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gemma", "hidden_size": 3072, "num_hidden_layers": 2, "intermediate_size": 8192,
        "num_attention_heads": 16, "vocab_size": 1000}))
    want = ModelShape.from_config(AutoConfig.from_pretrained(tmp_path))
    assert want.tied and want.head_dim == 256
    assert model_shape(str(tmp_path)) == want
