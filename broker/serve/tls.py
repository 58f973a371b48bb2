"""TLS on the one port: the server context, the handshake of each connection, and
certificate reload without a restart.

With ``server.tls_cert`` and ``server.tls_key`` set the port serves only https and wss:
every accepted TCP connection gets TLS (1.2 or later, HTTP/1.1 by ALPN) before a byte of
HTTP is read, and the rest of the server runs unchanged on the resulting `TlsStream`.

`broker.serve.tlsstream.TlsStream` (why not ``trio.SSLStream``: there) carries each
connection; frames are encrypted once per viewer, which cannot be shared.

- The handshake is bounded by ``server.header_timeout``; one that fails or stalls is
  counted by reason (``/healthz`` ``tls``), logged rate-limited, and the connection
  closed. Nothing a client does in it reaches the listener.
- A client speaking plain HTTP to the port (its first byte is not a TLS record, 0x16)
  gets ``400`` naming the https URL to use, then the connection is closed: never a hang.
  Not a redirect: the request, and any token in it, has already crossed the network in
  clear, and a silent redirect would hide that.
- `Certificates` holds the current context. `Certificates.watch` (a background job)
  polls the two files' modification stamps every ``POLL_INTERVAL`` and reloads on
  SIGHUP; a new context serves new connections, connected clients keep theirs. A pair
  that cannot be loaded is logged and counted, and the old one kept.

Every write, the direct one included, happens under the connection's send lock
(`broker.serve.wsframes.direct_access`); `TlsStream.send_all` also refuses two
concurrent senders, as trio's streams do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from broker.serve.tlsstream import TlsStream
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("broker.tls")

POLL_INTERVAL = 2.0  # seconds between looks at the certificate files
EXPIRY_WARNING = dt.timedelta(days=14)  # a certificate closer to its end is warned about
EXPIRY_CHECK = 24 * 3600.0  # seconds between those warnings while it is served
TLS_HANDSHAKE = 0x16  # the content type of the first TLS record (a ClientHello)
MAX_PLAIN_HEAD = 16 * 1024  # what is read of a plain-HTTP request before answering it
PLAIN_GRACE = 1.0  # seconds to let a plain-HTTP client read the answer before closing
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")

Stamp = tuple[tuple[int, int, int] | None, ...]


class TlsError(OSError):
    """A certificate and key that cannot serve: the message says which file and why. An
    OSError, as ``ssl.SSLError`` is: the broker reports it as a failure to start."""


def build_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server context for ``cert`` (a PEM chain) and ``key``: TLS 1.2 or later,
    HTTP/1.1 by ALPN, no compression, no renegotiation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey as exc:
        raise TlsError(f"{key}: {exc}") from exc
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename}: no such file") from exc
    except ssl.SSLError as exc:
        # load_cert_chain says KEY_VALUES_MISMATCH, PEM_LIB, ... without the file.
        raise TlsError(f"{cert} with {key}: not a usable certificate and key ({exc})") from exc
    except OSError as exc:
        raise TlsError(f"{exc.filename or cert}: cannot read: {exc.strerror or exc}") from exc
    return context


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    """Asked for only when the key is encrypted: OpenSSL would prompt on the terminal."""
    raise _EncryptedKey("the key is encrypted with a passphrase; give an unencrypted key")


def describe(cert: str | os.PathLike[str]) -> tuple[str, dt.datetime | None]:
    """``serial S, valid until DATE`` of the first certificate in a PEM file, for logs,
    and that date."""
    from cryptography import x509

    try:
        first = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})", None
    until = first.not_valid_after_utc
    return f"serial {first.serial_number:x}, valid until {until:%Y-%m-%d %H:%M} UTC", until


def _check_expiry(until: dt.datetime | None, cert: Path) -> None:
    if until is None:
        return
    left = until - dt.datetime.now(dt.UTC)
    if left <= dt.timedelta(0):
        log.error("TLS certificate %s has EXPIRED: clients will refuse it; renew it", cert)
    elif left < EXPIRY_WARNING:
        log.warning("TLS certificate %s expires in %d day(s): renew it", cert, left.days)


@dataclass(slots=True)
class TlsStats:
    """What `/healthz` shows of TLS."""

    handshakes: int = 0  # completed
    reloads: int = 0  # certificate pairs loaded after the first
    reload_failures: int = 0  # new pairs refused (the old one kept)
    not_after: dt.datetime | None = None  # the end of the served certificate's validity
    # Connections refused, by reason: plain_http, handshake_failed, handshake_timeout.
    refused: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "handshakes": self.handshakes,
            "refused": dict(self.refused),
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "not_after": self.not_after.isoformat() if self.not_after else None,
        }


class Certificates:
    """The current server context for a certificate and key file, reloaded when they
    change. Raises `TlsError` at construction when the pair cannot be used."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.stats = TlsStats()
        self._stamp = self._stamps()
        self._pending: Stamp | None = None
        self._expiry_checked = time.monotonic()
        self.context = build_context(self.cert, self.key)
        self._loaded("TLS certificate %s: %s", self.cert)

    def _loaded(self, message: str, detail: object) -> None:
        text, self.stats.not_after = describe(self.cert)
        log.info(message, detail, text)
        _check_expiry(self.stats.not_after, self.cert)

    def _stamps(self) -> Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.cert, self.key):
            try:
                info = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def poll(self) -> bool:
        """Reload once the files changed and then stayed as they are for one poll (a
        renewal writes two files, not at once); True when a new pair was loaded."""
        if time.monotonic() - self._expiry_checked > EXPIRY_CHECK:
            self._expiry_checked = time.monotonic()
            _check_expiry(self.stats.not_after, self.cert)
        stamp = self._stamps()
        if stamp == self._stamp:
            self._pending = None
            return False
        if stamp != self._pending:
            self._pending = stamp
            return False
        self._stamp, self._pending = stamp, None
        return self.reload("the files changed")

    def reload(self, why: str) -> bool:
        """Load the pair again; on failure keep the current context. True on success."""
        try:
            context = build_context(self.cert, self.key)
        except TlsError as exc:
            self.stats.reload_failures += 1
            log.error("TLS certificate not reloaded (%s): %s; keeping the previous one", why, exc)
            return False
        self.context = context
        self.stats.reloads += 1
        self._loaded("TLS certificate reloaded (%s): %s", why)
        return True

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Reload when the files change (polled every ``interval``) or on SIGHUP."""
        with contextlib.ExitStack() as stack:
            signals = None
            with contextlib.suppress(RuntimeError, ValueError):  # not the main thread
                signals = stack.enter_context(trio.open_signal_receiver(signal.SIGHUP))
            async with trio.open_nursery() as nursery:
                if signals is not None:
                    nursery.start_soon(self._on_signal, signals)
                while True:
                    await trio.sleep(interval)
                    self.poll()

    async def _on_signal(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self._stamp, self._pending = self._stamps(), None
            self.reload("SIGHUP")


class Handshakes:
    """Puts TLS on accepted connections with the current context of `certificates`."""

    def __init__(self, certificates: Certificates, timeout: float, port: int = 0) -> None:
        self.certificates = certificates
        self.stats = certificates.stats
        self.timeout = timeout
        self.port = port  # for the URL a plain-HTTP client is told to use
        self._complaints = LogThrottle(log)

    async def secure(self, stream: trio.SocketStream, client: str) -> TlsStream | None:
        """The connection with TLS on it, handshake done (``stream`` is then spent: the
        `TlsStream` owns the socket); None when the client spoke plain HTTP (answered),
        failed the handshake or did not finish it in time (counted, logged, closed). The
        caller closes ``stream`` either way."""
        first = b""
        with trio.move_on_after(self.timeout):
            try:
                first = await stream.socket.recv(1, socket.MSG_PEEK)
            except OSError:  # reset: the client is gone
                return None
            if not first:
                return None  # closed before saying anything: nothing to count
        if first and first[0] != TLS_HANDSHAKE and first.isalpha():  # "GET ...": plain HTTP
            self._refused("plain_http", client, "plain HTTP on the TLS port; told to use https")
            await self._answer_plain(stream)
            return None
        if first:
            try:
                secured = TlsStream.wrap(stream, self.certificates.context)
            except OSError:  # the socket is already gone
                return None
            if await self._handshake(secured, client):
                return secured
            await trio.aclose_forcefully(secured)
            return None
        self._refused("handshake_timeout", client, self._timed_out)
        return None

    @property
    def _timed_out(self) -> str:
        return f"no TLS handshake within {self.timeout:g} s; disconnected"

    async def _handshake(self, secured: TlsStream, client: str) -> bool:
        """True once done; False when it failed or timed out (counted, logged). The
        stream is closed if the task is cancelled meanwhile (shutdown)."""
        try:
            with trio.move_on_after(self.timeout):
                await secured.do_handshake()
                self.stats.handshakes += 1
                return True
            self._refused("handshake_timeout", client, self._timed_out)
        except trio.BrokenResourceError as exc:
            self._refused("handshake_failed", client, f"TLS handshake failed: {_why(exc)}")
        except BaseException:
            await trio.aclose_forcefully(secured)
            raise
        return False

    def _refused(self, reason: str, client: str, message: str) -> None:
        self.stats.refused[reason] += 1
        self._complaints.warning(reason, "client %s: %s", client, message)

    async def _answer_plain(self, stream: trio.SocketStream) -> None:
        """Read the request head (bounded in size and time: a head that never ends is
        answered all the same), answer 400 naming the https URL, and let the client
        read it before the connection closes."""
        head = b""
        with trio.move_on_after(self.timeout):
            while b"\r\n\r\n" not in head and len(head) < MAX_PLAIN_HEAD:
                chunk = await stream.receive_some(MAX_PLAIN_HEAD)
                if not chunk:
                    break
                head += chunk
        text = f"this port serves https: use https://{self._host(head)}/\n".encode()
        answer = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(text), text)
        )
        with trio.move_on_after(PLAIN_GRACE):
            await stream.send_all(answer)
            await stream.send_eof()
            while await stream.receive_some(MAX_PLAIN_HEAD):
                pass  # closing with unread bytes would reset the connection

    def _host(self, head: bytes) -> str:
        """The Host the client asked for when it is a plain host[:port], else ours."""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                host = value.strip().decode("ascii", "replace")
                if _HOST.fullmatch(host):
                    return host
        return f"HOST:{self.port}"


def _why(exc: BaseException) -> str:
    """The SSL library's short reason (``WRONG_VERSION_NUMBER``, ...), never peer bytes."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return cause.reason
    return type(cause).__name__ if cause is not None else "connection lost"
