"""The run folder: where each stage writes its artifacts and result, and where the next stage reads them.

reports/<run_id>/
  config.yaml            resolved config (what every stage reads)
  NN_stage.ipynb         executed notebooks
  results/<stage>.json   each stage's result (the runner builds summary.json from these)
  data/                  prepared train dataset, eval items (preprocess)
  checkpoints/ adapter/  trainer checkpoints and the final adapter (train)
  rl_checkpoints/ rl_adapter/  GRPO checkpoints and the adapter after it (reinforce, when the params have rl:)
  export/                the deliverable: adapter, metadata, model card, manifest (export)
  plots/                 PNG figures shown in the notebooks
"""
from __future__ import annotations

import json
import os
from pathlib import Path

STAGES = ["setup", "preprocess", "train", "reinforce", "export", "evaluate"]
# reinforce runs between train and export, so its notebook sorts between theirs without renumbering them
NOTEBOOKS = {"setup": "01_setup.ipynb", "preprocess": "02_preprocess.ipynb", "train": "03_train.ipynb",
             "reinforce": "03b_reinforce.ipynb", "export": "04_export.ipynb", "evaluate": "05_evaluate.ipynb"}
OPTIONAL = {"reinforce": "rl"}  # a stage a run has only when its params have this section


def run_stages(cfg) -> list[str]:
    """The stages of a run with this config: every stage, less an optional one whose params section is absent (a run
    without rl: has the five it always had, and is complete without a reinforce stage)."""
    return [s for s in STAGES if s not in OPTIONAL or getattr(cfg, OPTIONAL[s], None) is not None]
PACKAGE = Path(__file__).resolve().parents[1]
PROJECT = PACKAGE.parent  # the checkout: notebooks/, params/, reports/ (for an installed wheel: site-packages)
IN_CHECKOUT = (PROJECT / "runner.py").is_file() and (PROJECT / "notebooks").is_dir()


def notebook_dir() -> Path:
    """The stage notebooks: MEDQLORA_NOTEBOOK_DIR if set, else the installed package's (a wheel ships them as
    medqlora/notebooks/), else the checkout's notebooks/."""
    if os.environ.get("MEDQLORA_NOTEBOOK_DIR"):
        return Path(os.environ["MEDQLORA_NOTEBOOK_DIR"])
    return PACKAGE / "notebooks" if (PACKAGE / "notebooks").is_dir() else PROJECT / "notebooks"


def default_reports() -> Path:
    """reports/ in the checkout; for an installed package, reports/ in the folder you run in."""
    return PROJECT / "reports" if IN_CHECKOUT else Path.cwd() / "reports"


def kernel_cwd(run_path: Path) -> Path:
    """Where the stage kernels start: the checkout (as before), else the run folder (never site-packages)."""
    return PROJECT if IN_CHECKOUT else Path(run_path)


class StageInputError(RuntimeError):
    """A stage was run on a run folder that lacks what an earlier stage writes."""


def write_json(path: Path, obj) -> None:
    """Write through a temporary file so that a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def portable(obj, root: str | Path):
    """obj (JSON-like) with every path inside the folder root written relative to it ('adapter', 'inputs/t.jsonl'):
    what a run records stays true wherever its folder is restored (a scheduled execution starts in a new, empty
    folder), so nothing has to be rewritten, least of all a verified export."""
    roots = sorted({str(Path(root)), str(Path(root).resolve())}, key=len, reverse=True)

    def conv(v):
        if isinstance(v, str):
            for r in roots:
                if v == r:
                    return "."
                if v.startswith(r + "/"):
                    return v[len(r) + 1:]
            return v
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(obj)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def locate(self, recorded: str | Path) -> Path:
        """A path as a result records it (relative to the run folder, see portable) as a path here."""
        p = Path(recorded)
        return p if p.is_absolute() else self.path / p

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def train_data(self) -> Path:
        return self.path / "data" / "train"

    @property
    def val_data(self) -> Path:
        """The validation rows held out of the training data (data.val_fraction), tokenized like train/."""
        return self.path / "data" / "val"

    @property
    def val_items(self) -> Path:
        """The closed-form validation rows as items (prompt, options, answer): scored at every evaluation."""
        return self.path / "data" / "val_items.jsonl"

    @property
    def eval_items(self) -> Path:
        return self.path / "data" / "eval.jsonl"

    def eval_set_path(self, name: str) -> Path:
        """Items of a benchmark eval set (eval.sets), prepared like the held-out ones."""
        return self.path / "data" / f"eval_{name}.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def rl_adapter_dir(self) -> Path:
        """The adapter after the reinforce stage (GRPO), which the export takes when that stage ran."""
        return self.path / "rl_adapter"

    def stages(self) -> list[str]:
        """This run's stages, from its config.yaml: an optional stage only where its section is set, or where it ran
        (a result or an executed notebook)."""
        import yaml

        try:
            raw = yaml.safe_load(self.config_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        return [s for s in STAGES if s not in OPTIONAL or (isinstance(raw, dict) and raw.get(OPTIONAL[s]))
                or self.result_path(s).is_file() or (self.path / NOTEBOOKS[s]).is_file()]

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def plot(self, name: str) -> Path:
        (self.path / "plots").mkdir(exist_ok=True)
        return self.path / "plots" / name

    def result_path(self, stage: str) -> Path:
        return self.path / "results" / f"{stage}.json"

    def save_result(self, stage: str, result: dict) -> None:
        write_json(self.result_path(stage), portable(result, self.path))
        from medqlora.core.memory_log import record  # memory_log writes into a RunDir

        record(self, stage, "end")

    def result(self, stage: str) -> dict:
        """An earlier stage's result, or a clear error naming the stage to run first."""
        p = self.result_path(stage)
        if not p.is_file():
            raise StageInputError(f"{self.path} has no {stage} result ({p}); run the {stage} stage first "
                                  f"(python runner.py --resume {self.path.name}, or notebooks/{NOTEBOOKS[stage]})")
        return read_json(p)
