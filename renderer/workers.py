"""Lowering the scheduling priority of Dr.Jit's CPU worker threads.

After each kernel, Dr.Jit's (nanothread's) idle workers keep polling the task
queue for a while before they sleep. On 2 cores that steals the CPU from
whatever runs right after a render: temporal reuse measured 20-27 ms straight
after a Cornell-box render pair and 9.7 ms once the workers had gone to sleep.
With the workers at nice 10, the spinning yields to the torch threads, and
reuse took 9.7-9.8 ms right after the render; the render itself did not get
slower (75-79 ms either way), since nothing else wants the cores while it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

# Thread names of the pool's workers: "nt [1]" in Dr.Jit 1.x, "nanothread worker 1" before.
WORKER_PREFIXES = ("nt [", "nanothread")


def worker_threads() -> list[int]:
    """Thread ids of this process's Dr.Jit workers (Linux; elsewhere none are found)."""
    tids = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        if name.startswith(WORKER_PREFIXES):
            tids.append(int(task.name))
    return tids


def lower_priority(tids: list[int], nice: int) -> list[int]:
    """Set each thread's nice value to at least ``nice``; returns the threads changed.

    Only ever raises the value: an unprivileged process may not lower it.
    """
    changed = []
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed.append(tid)
        except OSError:  # gone, or not permitted: the loop still works, only slower
            continue
    return changed
