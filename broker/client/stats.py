"""`ClientStats`: what a client counted since `broker.client.connect`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of a client's counters since `connect`."""

    messages: int
    """Messages received, text and binary."""
    frames: int
    """Frames received."""
    dropped: int
    """Frames pushed out of the client's own queues before anyone read them."""
    gaps: int
    """Frames missing between consecutive sequence numbers of a camera: dropped by the
    broker for a slow connection, skipped for ``max_fps``, or never published."""
    reconnects: int
    """Connections made after the first one."""
    errors: int
    """``error`` messages received, and messages that could not be decoded."""
    handler_errors: int
    """Handler calls that raised."""
    handlers_skipped: int
    """Async handler calls not started because ``max_handler_tasks`` were running."""

    @property
    def drops(self) -> int:
        """Frames this client did not see: ``dropped + gaps``."""
        return self.dropped + self.gaps
