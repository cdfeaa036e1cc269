"""Holding the live loop to a frame budget: work shed in steps while its frames run slow, taken back when
they run fast again.

The loop is judged on the median of each window of frames, so that one slow frame (a checkpoint, a
page fault) decides nothing. Steps are shed cheapest-in-quality first and taken back last-shed first.
"""

from __future__ import annotations

from typing import Protocol

# The first window of frames judged: after the first kernels are compiled. Each following window of as
# many frames is judged alike, for as long as the loop runs.
BUDGET_FRAMES = range(5, 25)
# A shed step is taken back only where the window's median frame plus the step's expected cost stays under
# this share of the budget: a loop that runs near its budget would otherwise switch back and forth.
RESTORE_MARGIN = 0.9


class BudgetStep(Protocol):
    """One way to make a frame cheaper. ``window`` holds the median ms of each stage over the window."""

    name: str

    def shed(self, window: dict[str, float]) -> float | None:
        """Shed the work; the ms a frame it expects to save, or None where there was nothing to shed."""

    def restore_cost(self, window: dict[str, float]) -> float:
        """The ms a frame that taking the step back is expected to cost."""

    def restore(self) -> None:
        """Take the work back."""


def shed(over_ms: float, steps: list, window: dict[str, float]) -> list:
    """Take steps (popped from the front) until their expected savings cover ``over_ms``; those taken.

    A step with nothing to shed here (it returned None) is dropped, and the next is tried.
    """
    taken = []
    while over_ms > 0 and steps:
        step = steps.pop(0)
        saving = step.shed(window)
        if saving is not None:
            over_ms -= saving
            taken.append(step)
    return taken


class FrameBudget:
    """Judges each window of frames against ``budget_ms`` and sheds or restores ``steps`` (in order)."""

    def __init__(self, budget_ms: float, steps: list[BudgetStep], window: int = len(BUDGET_FRAMES),
                 first: int = BUDGET_FRAMES[0]):
        self.budget_ms = budget_ms
        self.pending = list(steps)
        self.taken: list[BudgetStep] = []
        self._restored: set[str] = set()  # each step is taken back at most once: then it stays shed
        self._size, self._first = window, first
        self._times: list[dict[str, float]] = []
        self.window: dict[str, float] = {}  # the median stage times of the window last judged
        self.events: list[tuple[int, str, str]] = []  # (first frame it applies to, "shed" | "restored", step)

    def observe(self, frame: int, timings: dict[str, float]) -> None:
        """Add frame ``frame``'s stage times; at the end of a window, shed or take back work."""
        if frame < self._first or not (self.pending or self.taken):
            return
        self._times.append(timings)
        if len(self._times) < self._size:
            return
        times, self._times = self._times, []
        self.window = {key: sorted(t.get(key, 0.0) for t in times)[len(times) // 2] for key in times[0]}
        over = self.window["frame"] - self.budget_ms
        if over > 0:
            for step in shed(over, self.pending, self.window):
                self.taken.append(step)
                self.events.append((frame + 1, "shed", step.name))
            return
        if not self.taken or self.taken[-1].name in self._restored:
            return
        step = self.taken[-1]
        if self.window["frame"] + step.restore_cost(self.window) <= RESTORE_MARGIN * self.budget_ms:
            step.restore()
            self.taken.pop()
            self.pending.insert(0, step)
            self._restored.add(step.name)
            self.events.append((frame + 1, "restored", step.name))
