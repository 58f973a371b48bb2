"""What the running broker holds, for ``/healthz``: its trio tasks and its open files.

Both are cheap enough to read on every ``/healthz`` (one walk of the task tree, one
listing of ``/proc/self/fd``), so a soak test can watch them over hours: a number that
keeps rising while the load stays the same is a leak (a task per connection that never
ends, a socket never closed).
"""

from __future__ import annotations

import os

import trio

FD_DIR = "/proc/self/fd"


def task_count() -> int | None:
    """The trio tasks alive in this run, the root task included; None outside a run."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:  # not inside trio.run
        return None
    if root is None:
        return None
    count, pending = 0, [root]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def open_files() -> int | None:
    """File descriptors this process has open (sockets included); None where /proc is
    not there to ask."""
    try:
        # Listing the folder opens one descriptor itself, which is not the broker's.
        return len(os.listdir(FD_DIR)) - 1
    except OSError:
        return None
