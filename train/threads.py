"""Torch's thread count for training, chosen by measured step time rather than by core count.

On a machine where other processes compete for the cores, torch's threads spin at every
synchronisation waiting for a sibling that is not scheduled: measured on 2 cores with two other
CPU-bound processes and a test run, a demo training step took 14.5 s with 2 threads and 1.75 s
with 1 (quiet, 2 threads are the faster). So every ``PERIOD`` steps the tuner times a few steps
at each candidate count and trains on with the fastest until the next check.

Example::

    tuner = ThreadTuner.for_machine()
    for step in range(steps):
        tuner.before(step)
        started = time.perf_counter(); train_step(); tuner.after(step, time.perf_counter() - started)
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Steps between checks, and steps timed at each candidate count in a check.
PERIOD = 100
PROBE = 3


@dataclass
class ThreadTuner:
    candidates: tuple[int, ...]  # thread counts to try, most first
    chosen: int
    timings: dict[int, list[float]] = field(default_factory=dict)

    @classmethod
    def for_machine(cls) -> ThreadTuner:
        import torch

        most = max(1, torch.get_num_threads())
        return cls(tuple(sorted({most, max(1, most // 2), 1}, reverse=True)), most)

    def _probing(self, step: int) -> int | None:
        """The count this step is timed at, or None outside a check."""
        offset = step % PERIOD
        index = offset // PROBE
        if len(self.candidates) < 2 or index >= len(self.candidates):
            return None
        return self.candidates[index]

    def before(self, step: int) -> None:
        import torch

        if step % PERIOD == 0:
            self.timings = {}
        wanted = self._probing(step) or self.chosen
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    def after(self, step: int, seconds: float) -> None:
        count = self._probing(step)
        if count is None:
            return
        self.timings.setdefault(count, []).append(seconds)
        if len(self.timings) == len(self.candidates) and all(len(t) == PROBE for t in self.timings.values()):
            self.chosen = min(self.timings, key=lambda c: sorted(self.timings[c])[PROBE // 2])
