"""The lm-evaluation-harness tasks a word in eval.sets stands for: `multimedqa` (the task group lm-eval runs and the
Open Medical-LLM Leaderboard reports) or one task's name. Each with the hub dataset, config and split lm-eval 0.4.13
reads, the prompt its task builds (doc_to_text, and MMLU's subject line), the metrics it reports and the items it has.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # lm-eval's task name
    hub: str
    config: str | None
    split: str  # the split lm-eval scores (its test_split)
    prompt: str  # which doc_to_text: medqa | medmcqa | pubmedqa | mmlu
    reports: tuple[str, ...]  # the metrics lm-eval's task reports (both are computed here)
    items: int  # items in that split: a hub read with fewer was not lm-eval's item set
    description: str = ""  # put before the prompt (MMLU's subject line)
    hub_note: str = ""  # said when the hub dataset cannot be read

    @property
    def format(self) -> str:
        return "pubmedqa" if self.prompt == "pubmedqa" else "mcq"


MMLU_MEDICAL = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144, "college_medicine": 173,
                "medical_genetics": 100, "professional_medicine": 272}

TASKS: dict[str, Task] = {
    "medqa_4options": Task("medqa_4options", "GBaker/MedQA-USMLE-4-options-hf", None, "test", "medqa",
                           ("acc", "acc_norm"), 1273),
    "medmcqa": Task("medmcqa", "openlifescienceai/medmcqa", None, "validation", "medmcqa", ("acc", "acc_norm"), 4183),
    "pubmedqa": Task("pubmedqa", "bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", "test", "pubmedqa", ("acc",),
                     500, hub_note="bigbio/pubmed_qa is read by a loading script, which datasets 4 no longer runs "
                     "(lm-eval's own pubmedqa task fails the same way: EleutherAI/lm-evaluation-harness#3645). Give "
                     "source: a local copy of its pubmed_qa_labeled_fold0_source test split (500 rows with QUESTION, "
                     "CONTEXTS, final_decision), e.g. saved where datasets<4 still reads it"),
    **{f"mmlu_{s}": Task(f"mmlu_{s}", "cais/mmlu", s, "test", "mmlu", ("acc",), n,
                         f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n")
       for s, n in MMLU_MEDICAL.items()},
}

# lm-eval's benchmarks/multimedqa/multimedqa.yaml, in its order; averaged over items (weight_by_size)
GROUPS: dict[str, tuple[str, ...]] = {
    "multimedqa": ("pubmedqa", "medmcqa", "medqa_4options", "mmlu_anatomy", "mmlu_clinical_knowledge",
                   "mmlu_college_medicine", "mmlu_medical_genetics", "mmlu_professional_medicine",
                   "mmlu_college_biology"),
}


def expand(word: str) -> list[dict]:
    """The eval.sets entries a word stands for: every task of a group, or the one task it names."""
    names = GROUPS.get(word) or ((word,) if word in TASKS else None)
    if names is None:
        raise ValueError(f"{word!r} is neither a task group ({', '.join(GROUPS)}) nor an lm-evaluation-harness task "
                         f"this project knows ({', '.join(TASKS)}); give your own set as {{name: ..., source: ...}}")
    return [{"name": n, "task": n} for n in names]


def task_defaults(entry: dict) -> dict:
    """An eval.sets entry with a task: the task's source, config, split and format where the entry gives none, and
    every item (lm-eval scores them all)."""
    task = TASKS.get(entry.get("task"))
    if task is None:
        raise ValueError(f"task {entry.get('task')!r} is not one this project knows; use one of {', '.join(TASKS)}, "
                         "or leave task out and give format and columns")
    if "source" not in entry:  # the hub dataset itself: its config and split too
        entry = {"config_name": task.config, "split": task.split, **entry, "source": task.hub}
    return {"format": task.format, "max_items": None, **entry}
