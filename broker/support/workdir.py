"""The broker's private folder for its ipc:// sockets, and the removal of folders that
dead brokers left behind.

Each broker makes ``camera-broker-XXXX`` in the temporary folder and writes its owner
into it: ``broker.pid`` holds the pid and the process's start time (from /proc, so a
reused pid does not pass for the broker). A broker killed with SIGKILL cannot remove its
folder; the next one to start removes every such folder that belongs to the same user
and whose owner is no longer running. A folder without a readable owner (a broker that
is just starting, or one from before owners were written) is left alone: a live
broker's folder is never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("broker")

PREFIX = "camera-broker-"
OWNER_FILE = "broker.pid"


def create(parent: str | os.PathLike[str] | None = None) -> Path:
    """A new private folder (mode 0700) owned by this process."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    pid = os.getpid()
    # Written whole and then renamed: a reader sees no owner, or the complete one.
    temp = path / f".{OWNER_FILE}.tmp"
    temp.write_text(f"{pid} {start_time(pid) or ''}".strip() + "\n")
    temp.replace(path / OWNER_FILE)
    return path


def remove_stale(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the folders of brokers of this user that are no longer running; returns
    them. Never raises for a folder it cannot read or remove (it logs and skips)."""
    removed = []
    root = Path(parent if parent is not None else tempfile.gettempdir())
    try:
        candidates = sorted(root.glob(PREFIX + "*"))
    except OSError as exc:
        log.warning("cannot look for stale broker folders in %s: %s", root, exc)
        return []
    for folder in candidates:
        try:
            if not is_stale(folder):
                continue
            shutil.rmtree(folder)
        except OSError as exc:
            log.warning("stale broker folder %s: cannot remove it: %s", folder, exc)
            continue
        log.info("removed %s, left behind by a broker that is no longer running", folder)
        removed.append(folder)
    return removed


def is_stale(folder: Path) -> bool:
    """True for a broker folder of this user whose recorded owner is not running."""
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False  # a symlink, a file, or another user's
    owner = read_owner(folder / OWNER_FILE)
    if owner is None:
        return False
    pid, started = owner
    return not running(pid, started)


def read_owner(path: Path) -> tuple[int, int | None] | None:
    """(pid, start time or None) from an owner file; None when missing or unreadable."""
    try:
        fields = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if not 1 <= len(fields) <= 2 or not all(f.isdigit() for f in fields):
        return None
    pid = int(fields[0])
    return (pid, int(fields[1]) if len(fields) == 2 else None) if pid > 0 else None


def running(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``started`` (clock
    ticks since boot; None: unknown, any process with that pid counts). A zombie has
    stopped running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    status = _proc_stat(pid)
    if status is None:
        return True  # no /proc: the pid exists, which is all we can know
    state, start = status
    if state in ("Z", "X"):
        return False
    return started is None or start == started


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, from /proc; None without it."""
    status = _proc_stat(pid)
    return status[1] if status is not None else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc/PID/stat; None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])  # state (field 3), starttime (field 22)
    except (IndexError, ValueError):
        return None
