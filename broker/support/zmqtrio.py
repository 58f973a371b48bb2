"""ZeroMQ under trio: the one receive loop and the one `bound_socket`.

pyzmq has no trio integration; this is our small adapter. The rules, each of which was
seen to bite:

- The ZMQ FD is edge-triggered and any call on the socket may consume the edge, so
  always try a non-blocking receive, then check ``EVENTS``, and only then sleep on the FD.
- trio allows one waiter per fd: exactly one task receives from a socket.
- ``notify_closing`` before ``close``, or a waiter blocks forever.
- A checkpoint per message, so a burst cannot starve other tasks.

A socket other tasks also send on (the control ROUTER) needs one more thing: a send may
eat the edge that says a message arrived while the receiver sleeps on the FD. So such
a socket's receiver sleeps in a cancel scope that every send "kicks" when ``EVENTS``
shows a message waiting, and never longer than `WAIT_BOUND` as a backstop. A
receive-only socket (ingest) sleeps without a scope: it costs a few microseconds a
frame, and nothing else touches that socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import trio
import zmq

# The longest the receiver of a socket that also sends sleeps on the FD before looking
# again: a backstop for a missed edge; normally a message or a kick wakes it at once.
WAIT_BOUND = 1.0


def bound_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    endpoints: Sequence[str],
    options: dict[int, int | bytes],
) -> tuple[zmq.Socket[bytes], list[str]]:
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


class TrioSocket:
    """A ZMQ socket owned by one receiving trio task; with ``sends``, any task may also
    send on it (`send_multipart`)."""

    def __init__(self, socket: zmq.Socket[bytes], *, sends: bool = False) -> None:
        self.socket = socket
        self.sends = sends
        self._fd = cast(int, socket.getsockopt(zmq.FD))
        self._waiting: trio.CancelScope | None = None  # the receiver's sleep, to kick

    async def receive_multipart(self) -> list[zmq.Frame]:
        """The next multipart message, as uncopied frames."""
        await trio.lowlevel.checkpoint_if_cancelled()
        socket = self.socket
        while True:
            try:
                parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if cast(int, socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    continue
                # Nothing is lost if this wait is cancelled: no message was taken yet.
                if not self.sends:
                    await trio.lowlevel.wait_readable(self._fd)
                    continue
                with trio.move_on_after(WAIT_BOUND) as self._waiting:
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    finally:
                        self._waiting = None
                continue
            # Received synchronously: a shielded yield lets others run without any
            # chance of losing this message to a cancellation.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return parts

    def send_multipart(self, parts: Sequence[bytes]) -> None:
        """Send now or raise `zmq.ZMQError` (a ROUTER's EHOSTUNREACH: no such peer;
        EAGAIN: its queue is full). Never blocks; kicks the receiver if the send may have
        eaten its edge."""
        if not self.sends:
            raise RuntimeError("this TrioSocket was made receive-only (sends=False)")
        try:
            self.socket.send_multipart(parts, zmq.NOBLOCK)
        finally:
            waiting = self._waiting
            if waiting is not None and cast(int, self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                waiting.cancel()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        self.socket.close(linger=0)
