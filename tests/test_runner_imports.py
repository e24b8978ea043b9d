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
