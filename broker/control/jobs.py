"""One-off jobs of the running control plane: the restore after a hello, a state-file
save, a scheduled preset. Each runs in `Control.run`'s nursery inside a boundary of
`Faults` named by ``where`` (``control:after-hello``...): a bug costs that run only,
never the broker. While control is not running, a job is dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVarTuple

import trio

from broker.support.faults import Faults

Args = TypeVarTuple("Args")


class Jobs:
    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.nursery: trio.Nursery | None = None  # set while `Control.run` runs

    @property
    def running(self) -> bool:
        return self.nursery is not None

    def start(self, where: str, job: Callable[[*Args], Awaitable[object]], *args: *Args) -> bool:
        """Start ``job(*args)`` once; False (and nothing runs) when control is not running."""
        if self.nursery is None:
            return False
        self.nursery.start_soon(self._contained, where, job, *args)
        return True

    async def _contained(
        self, where: str, job: Callable[[*Args], Awaitable[object]], *args: *Args
    ) -> None:
        with self.faults.contain(where):
            await job(*args)
