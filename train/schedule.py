"""The training budget (steps, epochs or wall time) and the learning rate over it.

A budget in steps (or epochs) gives the same model on a busy machine as on a quiet one, only
later; a budget in minutes gives fewer steps, and a worse model, when the machine is loaded (a
4-minute demo run got 37 steps instead of about 650 beside two busy processes).

Example::

    budget = Budget.start(minutes=None, epochs=None, steps_per_epoch=40, steps=650)
    lr = cosine_lr(5e-4, step=10, spent=budget.spent(10))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WARMUP_STEPS = 50  # linear warm-up from lr/50 to lr over this many steps
MAX_EPOCHS = 10_000  # the epoch limit of a run given only minutes: the clock ends it first
# The demo recipe's budget, and the default of a run given no other: batch 64 on 2,400 generated
# products; 4-minute runs on a quiet 2-core machine made 595-669 steps, and their figures in the
# README come from runs of that length.
RECIPE_STEPS = 650


@dataclass(frozen=True)
class Budget:
    """How much of a run is spent: its wall time when it has ``seconds``, else its steps."""

    started: float  # time.monotonic() when training began
    seconds: float | None
    total_steps: int

    @classmethod
    def start(cls, minutes: float | None, epochs: int | None, steps_per_epoch: int, steps: int | None = None) -> Budget:
        """Start the clock now; ``steps`` rules, then ``minutes``, then ``epochs`` of ``steps_per_epoch``;
        with none of them, RECIPE_STEPS."""
        if steps or not (minutes or epochs):
            return cls(time.monotonic(), None, steps or RECIPE_STEPS)
        total_steps = max(1, steps_per_epoch) * (epochs or MAX_EPOCHS)
        return cls(time.monotonic(), minutes * 60 if minutes else None, total_steps)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def spent(self, step: int) -> float:
        """The share of the budget used so far, 0 to 1 (and past 1 once it has run out)."""
        return self.elapsed() / self.seconds if self.seconds else step / self.total_steps


def cosine_lr(base_lr: float, step: int, spent: float) -> float:
    """Linear warm-up over the first WARMUP_STEPS steps, times a cosine decay to 0 over the time (or step) budget."""
    return base_lr * min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * min(1.0, spent)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
