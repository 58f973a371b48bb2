"""Logging that cannot flood: at most one line per key per interval, with a count of
what was suppressed in between.

Keys name a *reason* ("unknown_camera", "400"), never a value a peer chooses (a camera
id, an address): the key set is bounded anyway (`MAX_KEYS`, least recently used first
out), so a peer inventing keys cannot grow memory or the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_KEYS = 256


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        # key -> (when last logged, how many suppressed since)
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the interval; True when it was logged."""
        return self.log(logging.WARNING, key, message, *args)

    def error(
        self, key: str, message: str, *args: object, exc: BaseException | None = None
    ) -> bool:
        """Like `warning`, at ERROR, with ``exc``'s traceback when given."""
        return self.log(logging.ERROR, key, message, *args, exc=exc)

    def log(
        self, level: int, key: str, message: str, *args: object, exc: BaseException | None = None
    ) -> bool:
        now = self.clock()
        seen = self._keys.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._keys[key] = (seen[0], seen[1] + 1)
            self._keys.move_to_end(key)
            return False
        suppressed = seen[1] if seen is not None else 0
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        if suppressed:
            message += " (%d similar suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc)
        return True

    def __len__(self) -> int:
        return len(self._keys)
