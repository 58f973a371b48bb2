"""Large frames and the C allocator: give their memory back when they are freed.

glibc serves allocations above a threshold with their own ``mmap`` and returns them to
the system on ``free``, but raises that threshold (up to 32 MiB) each time it frees such
a block: after the first few 4K frames (17-25 MB each), every later frame comes from
the heap, and the heap keeps what a burst of frames in flight once needed. Measured with
4 viewers of a 4K LZ4 camera: 333 MB of RSS instead of 197 MB (benchmarks 4k). A fixed
threshold (`mallopt(M_MMAP_THRESHOLD)`) keeps every block of at least `THRESHOLD` on its
own mapping, so the memory the broker holds follows the frames it holds; smaller
allocations (JPEG frames of a few hundred KB, everything else) are unaffected.

Only on glibc; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("broker")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1024 * 1024


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False when not on glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    log.debug("malloc: mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
