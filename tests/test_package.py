"""What `pip install medqlora` brings: the declared dependencies (the versions this environment tests), the GPU
extra that Colab installs, every subpackage and the stage notebooks in the wheel."""
import importlib.metadata
import re
import tomllib

from conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_and_the_notebooks_are_in_the_package_list():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "medqlora").rglob("*.py")
             if "__pycache__" not in p.parts}
    assert listed == found | {"medqlora.notebooks"}, "pyproject.toml's packages must name every folder of modules"
    assert PROJECT["tool"]["setuptools"]["package-dir"]["medqlora.notebooks"] == "notebooks"


def test_declared_pins_are_the_versions_installed_here():
    """The exact pins in [project.dependencies] are what the suite runs on (CI installs from them)."""
    wrong = []
    for req in PROJECT["project"]["dependencies"]:
        m = re.match(r"([A-Za-z0-9_.-]+)==([^;\s]+)", req)
        if m and importlib.metadata.version(m.group(1)) != m.group(2):
            wrong.append(f"{req}: installed {importlib.metadata.version(m.group(1))}")
    assert not wrong, wrong


def test_colab_installs_the_pinned_gpu_extra():
    from medqlora.core.system import colab_install_commands, gpu_requirements

    gpu = gpu_requirements()
    assert {"unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "xformers==0.0.35"} <= set(gpu)
    assert all("==" in r for r in gpu), "every GPU package pinned"
    assert "trl==1.14.2" in PROJECT["project"]["dependencies"]  # what Unsloth 2026.10.9 accepts (<=1.15.0)
    (cmd,) = colab_install_commands(["unsloth"])
    assert cmd[1:5] == ["-m", "pip", "install", "-q"] and cmd[5:] == gpu and "--no-deps" not in cmd
    assert colab_install_commands([]) == []
