"""Receiving from a pyzmq socket under trio.

pyzmq has no trio integration; this is the small adapter ``NOTES.md`` describes. The
rules, each of which was seen to bite:

- The ZMQ FD is edge-triggered and any call on the socket may consume the edge, so
  always try a non-blocking receive, then check ``EVENTS``, and only then sleep on the FD.
- trio allows one waiter per fd: exactly one task receives from a socket.
- ``notify_closing`` before ``close``, or a waiter blocks forever.
- A checkpoint per message, so a burst cannot starve other tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
import zmq


def bound_socket(
    context: zmq.Context, kind: int, endpoints: Sequence[str], options: dict[int, int | bytes]
) -> tuple[zmq.Socket, list[str]]:
    """A socket of ``kind`` with ``options``, bound on ``endpoints``; returns it with the
    endpoints actually bound (``tcp://host:*`` picks a free port). Closed if any bind fails."""
    socket = context.socket(kind)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            socket.setsockopt(option, value)
        bound = []
        for endpoint in endpoints:
            socket.bind(endpoint)
            bound.append(socket.getsockopt_string(zmq.LAST_ENDPOINT))
    except BaseException:
        socket.close(linger=0)
        raise
    return socket, bound


class TrioReceiver:
    """A receive-only ZMQ socket owned by one trio task."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self._fd = socket.getsockopt(zmq.FD)

    async def receive_multipart(self) -> list[zmq.Frame]:
        """The next multipart message, as uncopied frames."""
        await trio.lowlevel.checkpoint_if_cancelled()
        socket = self.socket
        while True:
            try:
                parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    continue
                # Nothing is lost if this wait is cancelled: no message was taken yet.
                await trio.lowlevel.wait_readable(self._fd)
                continue
            # Received synchronously: a shielded yield lets others run without any
            # chance of losing this message to a cancellation.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return parts

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        self.socket.close(linger=0)
