"""Packed training that stays exact: several examples share one row, yet none attends to another and each keeps
the loss it would have alone, prompt tokens masked as before.

TRL packs with best-fit decreasing and marks where each example starts by restarting position_ids at 0. What
keeps the examples apart is the attention: Unsloth builds a block-diagonal mask from those positions, and
transformers' SDPA path does the same, but only when no KV cache is passed (TRL's chunked loss calls the model
without one; train() also turns `model.config.use_cache` off). `check` measures it before any training step on
the run's first packed row holding two examples or more: each example's loss inside the row against its loss alone
(a row of one example compares nothing; with no such row the check says "not checked", never "passed").
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

# Measured on a packed row: float32 agrees to ~1e-6; bf16/fp16 kernels see different shapes packed and alone,
# so their losses part by rounding (~1e-2 at most). Attending across examples moves losses by 0.1 or more.
TOLERANCE = {4: 1e-3, 2: 5e-2}


def resolve(setting, backend: str) -> bool:
    """train.packing: auto packs on the GPU (Unsloth); on a CPU the block-diagonal SDPA mask costs 2.5x per token
    (measured on 2 cores), so there it stays off."""
    return backend == "unsloth" if setting == "auto" else bool(setting)


def segments(position_ids) -> list[tuple[int, int]]:
    """(start, end) of each example in a packed row, from where position_ids restart at 0 (trailing pad dropped)."""
    pos = [int(p) for p in position_ids]
    starts = [i for i, p in enumerate(pos) if p == 0 or (i and p != pos[i - 1] + 1)]
    bounds = starts + [len(pos)]
    out = [(a, b) for a, b in zip(bounds, bounds[1:])]
    return [(a, b) for a, b in out if b - a > 1]


MAX_SEARCH_BATCHES = 200  # batches looked through for a row holding two examples (collating only: cheap)


@dataclass
class PackingCheck:
    examples: int  # examples with answer tokens in the row checked; under 2: nothing was compared
    answer_tokens: int
    max_abs_diff: float
    tolerance: float
    prompt_masked: bool  # every masked (-100) label of each example is still masked in the packed row
    prompt_checked: int  # examples whose unpacked labels were at hand to compare with
    losses_packed: list[float]
    losses_alone: list[float]
    batches_searched: int = 1  # batches looked through to find a row holding at least two examples
    seconds: float = 0.0

    @property
    def checked(self) -> bool:
        """Only a row holding two examples or more can show one example attending to another."""
        return self.examples >= 2

    @property
    def passed(self) -> bool:
        return self.checked and self.prompt_masked and self.max_abs_diff <= self.tolerance

    @property
    def failed(self) -> bool:
        return self.checked and not self.passed

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "FAILED" if self.failed else "not checked"

    def line(self) -> str:
        if not self.checked:
            return (f"packing check: not checked: no packed row in the {self.batches_searched} batches searched holds "
                    "two examples with answer tokens, so none could show examples attending to each other")
        verdict = "examples isolated" if self.passed else "EXAMPLES NOT ISOLATED"
        where = ("the first packed row" if self.batches_searched == 1
                 else f"a packed row of batch {self.batches_searched}")
        return (f"packing check: {self.examples} examples in {where}, per-example loss packed vs alone "
                f"max difference {self.max_abs_diff:.2e} (tolerance {self.tolerance:g}), prompt tokens "
                f"{'masked' if self.prompt_masked else 'NOT masked'} ({self.prompt_checked} compared): {verdict} "
                f"({self.seconds:.1f} s)")

    def to_dict(self) -> dict:
        return {**asdict(self), "checked": self.checked, "passed": self.passed, "verdict": self.verdict}


def _answer_segments(labels, position_ids) -> list[tuple[int, int]]:
    return [s for s in segments(position_ids.tolist()) if (labels[s[0] + 1:s[1]] != -100).any()]


def find_row(batches, max_batches: int = MAX_SEARCH_BATCHES) -> tuple[dict | None, int]:
    """The first row, as a batch of one, holding at least two examples with answer tokens, and how many batches
    were looked through (all of them, up to max_batches, when there is none)."""
    searched = 0
    for batch in batches:
        if searched >= max_batches:
            break
        searched += 1
        n = batch["input_ids"].shape[0]
        for r in range(n):
            if len(_answer_segments(batch["labels"][r], batch["position_ids"][r])) >= 2:
                return {k: v[r:r + 1] if getattr(v, "ndim", 0) and v.shape[0] == n else v
                        for k, v in batch.items()}, searched
    return None, searched


def _loss(model, **kw) -> float:
    return float(model(**kw).loss.float())


def _eager():
    """Compiled code runs uncompiled inside the check. Unsloth compiles each decoder layer for unpacked rows, once per
    grad mode and again for a second length, and trains packed rows uncompiled: the check's no-grad passes over rows
    of one example would pay compilations the run never uses (about 25 s of a 1B train stage on an H200)."""
    import torch

    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


# Examples compared: two passes each (packed, alone), 0.7 to 1.2 s a pair on an H200 (1B and 8B shapes); an example
# that attends to another shows it whichever it is, so four say as much as eight.
MAX_EXAMPLES = 4


def check(model, batches, dataset_rows: list[dict] | None = None, max_examples: int = MAX_EXAMPLES) -> PackingCheck:
    """Per-example losses in a packed row (other examples' labels masked, so the loss is that example's alone)
    against the same example run by itself. `batches`, one batch or an iterable of them, is searched for the first
    row holding at least two examples; without one the result is "not checked", never passed. dataset_rows, the
    unpacked training rows, lets the check also confirm each example's prompt mask survived packing."""
    import torch

    t0 = time.time()
    row, searched = find_row([batches] if isinstance(batches, dict) else batches)
    if row is None:
        return PackingCheck(0, 0, 0.0, 0.0, True, 0, [], [], searched, round(time.time() - t0, 2))
    ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
    extra = {k: v for k, v in row.items() if k not in ("input_ids", "labels", "position_ids", "attention_mask")}
    segs = _answer_segments(labels[0], pos[0])[:max_examples]
    by_ids = {tuple(r["input_ids"]): r["labels"] for r in dataset_rows or []}
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    saved = [m.p for m in dropouts]
    for m in dropouts:  # dropout would make two passes differ whatever the packing
        m.p = 0.0
    # Training mode, as the step that follows: on a CPU with AVX512-BF16, bitsandbytes converts 4-bit weights for
    # inference at their first eval-mode forward, for good, and that layout has no backward pass.
    was_training = model.training
    model.train()
    packed, alone, masked, tokens, compared = [], [], True, 0, 0
    try:
        with torch.no_grad(), _eager():
            for a, b in segs:
                only = torch.full_like(labels, -100)
                only[:, a:b] = labels[:, a:b]
                packed.append(_loss(model, input_ids=ids, labels=only, position_ids=pos, **extra))
                seg_ids, seg_labels = ids[:, a:b], labels[:, a:b]
                alone.append(_loss(model, input_ids=seg_ids, labels=seg_labels,
                                   position_ids=torch.arange(b - a, device=ids.device)[None]))
                tokens += int((seg_labels[0, 1:] != -100).sum())
                want = by_ids.get(tuple(seg_ids[0].tolist()))
                if want is not None:  # the collator also masks each example's first token, a prompt token anyway
                    compared += 1
                    got = seg_labels[0].tolist()
                    masked &= all(g == -100 for g, w in zip(got, want) if w == -100) and got[1:] == list(want[1:])
    finally:
        model.train(was_training)
        for m, p in zip(dropouts, saved):
            m.p = p
    diff = max((abs(x - y) for x, y in zip(packed, alone)), default=0.0)
    dtype_bytes = next((p.element_size() for p in model.parameters() if p.is_floating_point() and not p.requires_grad),
                       4)
    return PackingCheck(len(segs), tokens, diff, TOLERANCE.get(dtype_bytes, TOLERANCE[2]), masked, compared,
                        [round(x, 5) for x in packed], [round(x, 5) for x in alone], searched, round(time.time() - t0, 2))


def check_trainer(trainer, dataset_rows: list[dict] | None = None) -> PackingCheck:
    """check() on the batches the trainer's own collator makes (the collator and kwargs the run trains with)."""
    model = trainer.model
    device = next(p.device for p in model.parameters())
    batches = ({k: v.to(device) if hasattr(v, "to") else v for k, v in b.items()}
               for b in trainer.get_train_dataloader())
    return check(model, batches, dataset_rows)
