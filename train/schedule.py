"""The training budget (wall time or steps) and the learning rate over it.

Example::

    budget = Budget.start(minutes=4.0, epochs=None, steps_per_epoch=40)
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


@dataclass(frozen=True)
class Budget:
    """How much of a run is spent: its wall time when it has ``seconds``, else its steps."""

    started: float  # time.monotonic() when training began
    seconds: float | None
    total_steps: int

    @classmethod
    def start(cls, minutes: float | None, epochs: int | None, steps_per_epoch: int) -> Budget:
        """Start the clock now; ``minutes`` (when set) rules, else ``epochs`` of ``steps_per_epoch``."""
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
