"""TRL's SFTConfig with a warmup that always leaves a step to train. Its own module: importing it loads trl (seconds),
which only the train stage needs; a module-level class, since the trainer pickles its arguments into checkpoints."""
from __future__ import annotations

from trl import SFTConfig


class SFTArgs(SFTConfig):
    def get_warmup_steps(self, num_training_steps: int) -> int:
        # A schedule's first warmup step has rate 0: a run that is all warmup (a one-step smoke run) would train
        # nothing, and the export would refuse its untouched adapter. At most all steps but one warm up.
        return max(0, min(super().get_warmup_steps(num_training_steps), num_training_steps - 1))
