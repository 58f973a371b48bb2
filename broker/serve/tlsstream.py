"""TLS as a trio stream: `TlsStream`, a ``trio.abc.Stream`` over a non-blocking
``ssl.SSLSocket`` (`broker.serve.tls` puts one on each connection).

OpenSSL writes its records straight to the socket. ``trio.SSLStream`` goes through
memory BIOs instead (encrypt into one, copy the result out into a new bytes object, send
that): measured at 15-20% more CPU per frame (140 KB frames, 32 paced clients: 192-203
against 158-172 us per frame per client). And a plain socket underneath lets
`broker.serve.delivery.DirectWriter` encrypt and write a frame to an idle viewer from
``Hub.publish`` itself, as it does without TLS, instead of waking the viewer's task.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

RECEIVE_SIZE = 64 * 1024  # what receive_some reads when not told
BUSY_RETRY = 0.005  # s: see TlsStream._wait

T = TypeVar("T")


class TlsStream(trio.abc.Stream):
    """TLS over a non-blocking ``ssl.SSLSocket``, waited on with trio: one task may
    send while another receives (OpenSSL is called from one thread, between awaits).

    Like ``trio.SSLStream(https_compatible=True)``: closing sends no ``close_notify``,
    and a peer that closes without one is an end of stream, not an error. A send
    cancelled part-way leaves the TLS session mid-record: the connection must then be
    closed, as with any stream here (see `broker.serve.delivery`).
    """

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self._sending = False
        self._receiving = False
        self._closed = False

    @classmethod
    def wrap(cls, stream: trio.SocketStream, context: ssl.SSLContext) -> TlsStream:
        """Take ``stream``'s socket over (it is left closed) for a server-side session."""
        raw = socket.socket(fileno=stream.socket.detach())
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        tls.setblocking(False)
        return cls(tls)

    async def do_handshake(self) -> None:
        await self._io(self.tls.do_handshake)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            return await self._io(self._receive, max_bytes or RECEIVE_SIZE)
        finally:
            self._receiving = False

    def _receive(self, size: int) -> bytes:
        try:
            return self.tls.recv(size)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # closed, with close_notify or not
            return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            with memoryview(data) as view:
                if not view.nbytes:
                    await self._io(int)  # a checkpoint, and ClosedResourceError once closed
                sent, total = 0, view.nbytes
                while sent < total:
                    # After a "want write" OpenSSL must be given the same bytes again:
                    # the loop does, from the same offset.
                    sent += await self._io(self.tls.send, view[sent:])
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait(trio.lowlevel.wait_writable)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.tls)
            self.tls.close()
        await trio.lowlevel.checkpoint()

    async def _io(self, operation: Callable[..., T], *args: object) -> T:
        """Call ``operation`` until OpenSSL stops asking to wait for the socket; a
        checkpoint either way. OpenSSL's and the socket's errors become
        trio.BrokenResourceError; a closed stream raises trio.ClosedResourceError."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this TLS stream is closed")
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                await self._wait(trio.lowlevel.wait_readable)
            except ssl.SSLWantWriteError:
                await self._wait(trio.lowlevel.wait_writable)
            except (ssl.SSLError, OSError) as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            else:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result
            waited = True

    async def _wait(self, wait: Callable[[ssl.SSLSocket], Awaitable[None]]) -> None:
        """Wait for the socket. Trio allows one waiter per direction: when OpenSSL makes
        a receive wait to write (a key update) or a send wait to read, while the other
        task already waits that way, poll instead."""
        try:
            await wait(self.tls)
        except trio.BusyResourceError:
            await trio.sleep(BUSY_RETRY)
