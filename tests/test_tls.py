"""TLS on the one port, against real `broker run` processes with a certificate from a
test CA (trustme): https snapshots and MJPEG, wss per camera and on /ws (through the
client library), a plain-HTTP request answered at once, a stalled handshake cut off
while a viewer carries on, certificate renewal without dropping a viewer, the config
rules and `broker tls-selfsigned`. The browser tests are in test_tls_browser.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import signal
import socket
import ssl
import stat
import time
import urllib.request
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from procs import BrokerProcess, synthetic_camera
from trio_websocket import open_websocket_url

from broker import config as configuration
from broker.cli import main
from broker.trust import selfsigned

HEADER_TIMEOUT = 1.0


def issue(ca: trustme.CA, folder: Path) -> int:
    """A certificate for 127.0.0.1 and localhost from ``ca``, written to folder/cert.pem
    and folder/key.pem; returns its serial."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_config(tmp_path: Path) -> Path:
    """A config serving one synthetic camera over TLS with tmp_path/cert.pem and key.pem."""
    path = tmp_path / "broker.toml"
    path.write_text(
        f'[server]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\nheader_timeout = {HEADER_TIMEOUT}\n'
        "[ingest]\nendpoints = []\noffline_after = 1.0\n[control]\nendpoints = []\n"
        + synthetic_camera("cam", 320, 240, 10)
    )
    return path


def tls_broker(tmp_path: Path, ca: trustme.CA) -> BrokerProcess:
    issue(ca, tmp_path)
    return BrokerProcess(tls_config(tmp_path), ssl_context=client_context(ca))


def health(broker: BrokerProcess) -> dict:
    with urllib.request.urlopen(
        broker.url + "/healthz", timeout=5, context=broker.ssl_context
    ) as answer:
        return json.load(answer)


async def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial of the certificate a new connection is shown."""
    with trio.fail_after(5):
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", port, ssl_context=context, https_compatible=True
        )
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        await stream.aclose()
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class WssViewer:
    """A wss viewer of one camera in a trio task: counts frames, notes how it ended."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.url, self.context = url, context
        self.frames = 0
        self.ended: BaseException | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_websocket_url(self.url, ssl_context=self.context) as ws:
                task_status.started()
                while True:
                    message = await ws.get_message()
                    assert message[:2] == b"\xff\xd8"
                    self.frames += 1
        except Exception as exc:
            self.ended = exc
            raise

    async def more(self, count: int, within: float = 10) -> None:
        target = self.frames + count
        with trio.fail_after(within):
            while self.frames < target:
                await trio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_https_wss_and_ws_over_tls_and_what_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    with tls_broker(tmp_path, ca) as broker:
        context = broker.ssl_context
        assert context is not None
        broker.wait_online("cam")
        # https: a snapshot and an MJPEG stream.
        with urllib.request.urlopen(
            broker.url + "/cameras/cam/snapshot.jpg", timeout=5, context=context
        ) as answer:
            assert answer.read()[:2] == b"\xff\xd8"
        with urllib.request.urlopen(
            broker.url + "/cameras/cam/mjpeg", timeout=5, context=context
        ) as answer:
            assert answer.headers["content-type"].startswith("multipart/x-mixed-replace")
            body = b""
            while body.count(b"\xff\xd8") < 3:
                body += answer.read1(65536)
        # wss, one camera and /ws through the client library, a viewer beside them.
        from broker import client as broker_client

        viewer = WssViewer(f"wss://127.0.0.1:{broker.port}/cameras/cam", context)
        async with trio.open_nursery() as nursery:
            await nursery.start(viewer.run)
            await viewer.more(3)
            url = f"wss://127.0.0.1:{broker.port}/ws"
            with trio.fail_after(10):
                async with broker_client.connect(url, ssl_context=context) as client:
                    assert [c["id"] for c in await client.list_cameras()] == ["cam"]
                    await client.subscribe("cam")
                    received = 0
                    async for frame in client.frames("cam"):
                        assert frame.data[:2] == b"\xff\xd8" and frame.width == 320
                        received += 1
                        if received == 3:
                            break
            # Plain HTTP on the TLS port: a clear answer at once, never a hang.
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as plain:
                plain.sendall(
                    b"GET /api/cameras?token=secret HTTP/1.1\r\nHost: cams.lan:8443\r\n\r\n"
                )
                answer = b""
                while chunk := plain.recv(4096):
                    answer += chunk
            assert time.monotonic() - started < 0.9 * HEADER_TIMEOUT
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert b"this port serves https: use https://cams.lan:8443/" in answer
            assert b"secret" not in answer
            # One that never finishes its request head is answered all the same.
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as plain:
                plain.sendall(b"GET / HTTP/1.1\r\n")
                started = time.monotonic()
                answer = b""
                while chunk := plain.recv(4096):
                    answer += chunk
            assert HEADER_TIMEOUT * 0.8 < time.monotonic() - started < HEADER_TIMEOUT + 2
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert f"use https://HOST:{broker.port}/".encode() in answer
            # A client that stalls mid-handshake is cut off at header_timeout; a viewer
            # and new clients are not held up meanwhile.
            stalled = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
            stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00")  # the start of a ClientHello
            started = time.monotonic()
            before = viewer.frames
            served = await served_serial(broker.port, context)
            assert served > 0
            closed = await trio.to_thread.run_sync(stalled.recv, 100)
            waited = time.monotonic() - started
            stalled.close()
            assert closed == b""
            assert 0.8 * HEADER_TIMEOUT <= waited < HEADER_TIMEOUT + 2
            assert viewer.frames >= before + 5  # 10 fps: it kept receiving
            # Garbage instead of a ClientHello: refused, counted.
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as junk:
                junk.sendall(b"\x00\x01\x02 not tls at all")
                with contextlib.suppress(ConnectionResetError):  # or closed: alert, FIN
                    assert junk.recv(100) in (b"", b"\x15\x03\x03\x00\x02\x02\x46")
            nursery.cancel_scope.cancel()
        report = health(broker)
        assert report["tls"]["refused"] == {
            "plain_http": 2,
            "handshake_timeout": 1,
            "handshake_failed": 1,
        }
        assert report["tls"]["handshakes"] >= 6
        assert report["faults"] == {}
        with urllib.request.urlopen(broker.url + "/metrics", timeout=5, context=context) as answer:
            metrics = answer.read().decode()
        assert 'camera_broker_tls_refused_total{reason="handshake_timeout"} 1.0' in metrics
        assert 'camera_broker_tls_reloads_total{outcome="failed"} 0.0' in metrics
        assert "camera_broker_tls_certificate_expiry_seconds 3." in metrics  # year 3000
        logs = broker.logs()
        assert "plain HTTP on the TLS port" in logs
        assert "no TLS handshake within 1 s" in logs
        assert "listening on https://" in logs
        assert "secret" not in logs


@pytest.mark.timeout(90)
async def test_certificate_renewal_keeps_connected_viewers(tmp_path: Path) -> None:
    ca = trustme.CA()
    with tls_broker(tmp_path, ca) as broker:
        context = broker.ssl_context
        assert context is not None
        broker.wait_online("cam")
        first = await served_serial(broker.port, context)
        viewer = WssViewer(f"wss://127.0.0.1:{broker.port}/cameras/cam", context)
        async with trio.open_nursery() as nursery:
            await nursery.start(viewer.run)
            await viewer.more(3)
            renewed = issue(ca, tmp_path)  # a renewal: new pair, same paths
            assert renewed != first
            with trio.fail_after(10):  # polled every 2 s, reloaded once settled
                while await served_serial(broker.port, context) != renewed:
                    await trio.sleep(0.3)
            await viewer.more(10)  # the viewer connected before is still served
            assert viewer.ended is None
            # A bad pair is refused and the served one kept.
            (tmp_path / "cert.pem").write_text("not a certificate\n")
            with trio.fail_after(10):
                while health(broker)["tls"]["reload_failures"] < 1:
                    await trio.sleep(0.3)
            assert await served_serial(broker.port, context) == renewed
            # SIGHUP reloads at once.
            again = issue(ca, tmp_path)
            assert broker.process is not None
            broker.process.send_signal(signal.SIGHUP)
            with trio.fail_after(3):
                while await served_serial(broker.port, context) != again:
                    await trio.sleep(0.1)
            await viewer.more(5)
            assert viewer.ended is None
            nursery.cancel_scope.cancel()
        report = health(broker)["tls"]
        assert report["reloads"] >= 2
        assert health(broker)["faults"] == {}


# -- config ---------------------------------------------------------------------------


def config_errors(tmp_path: Path, server: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(f"[server]\n{server}\n")
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(path)
    return caught.value.errors


def test_config_rules_for_the_certificate_and_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    issue(ca, tmp_path)
    other = ca.issue_cert("elsewhere")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    (tmp_path / "junk.pem").write_text("junk\n")
    assert config_errors(tmp_path, 'tls_cert = "cert.pem"') == [
        'server.tls_key: must be set with server.tls_cert (TLS needs both the certificate and its key), or both left ""'
    ]
    assert config_errors(tmp_path, 'tls_key = "key.pem"')[0].startswith(
        "server.tls_cert: must be set with server.tls_key"
    )
    assert config_errors(tmp_path, 'tls_cert = "nope.pem"\ntls_key = "key.pem"') == [
        f'server.tls_cert: "nope.pem": no such file ({tmp_path / "nope.pem"})'
    ]
    assert config_errors(tmp_path, 'tls_cert = "cert.pem"\ntls_key = "other.key"') == [
        f"server.tls_key: {tmp_path / 'other.key'}: not the private key of server.tls_cert"
    ]
    assert config_errors(tmp_path, 'tls_cert = "junk.pem"\ntls_key = "key.pem"')[0].startswith(
        f"server.tls_cert: {tmp_path / 'junk.pem'}: not a PEM certificate"
    )
    # Relative to the config file, whatever the working folder.
    (tmp_path / "c.toml").write_text('[server]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n')
    loaded = configuration.load(tmp_path / "c.toml")
    assert loaded.server.tls_cert == str(tmp_path / "cert.pem")
    assert loaded.server.tls_key == str(tmp_path / "key.pem")


def test_grafana_with_tls_gives_wss_urls_and_refuses_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issue(trustme.CA(), tmp_path)
    path = tls_config(tmp_path)
    out = tmp_path / "grafana"
    assert main(["grafana", str(path), "--public-url", "http://h:8765", "--out", str(out)]) == 2
    assert "serves only https and wss" in capsys.readouterr().err
    assert main(["grafana", str(path), "--public-url", "https://h:8765", "--out", str(out)]) == 0
    live = json.loads((out / "camera-broker-live.json").read_text())
    assert live["panels"][0]["options"]["wsUrl"] == "wss://h:8765/cameras/cam"
    mjpeg = (out / "camera-broker-mjpeg.json").read_text()
    assert "https://h:8765/cameras/cam/mjpeg" in mjpeg


# -- broker tls-selfsigned ----------------------------------------------------------


def test_selfsigned_writes_a_pair_clients_can_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"
    hosts = ["localhost", "127.0.0.1", "::1", "cams.lan"]
    argv = ["tls-selfsigned", *(a for h in hosts for a in ("--host", h)), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f'tls_cert = "{out / "cert.pem"}"' in printed
    assert "update-ca-certificates" in printed and "Grafana" in printed
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "cams.lan"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=800)
    # Existing files are kept unless --force; a bad name is refused.
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert main(["tls-selfsigned", "--host", "bad name", "--out", str(tmp_path / "x")]) == 2
    assert "not a host name or IP address: 'bad name'" in capsys.readouterr().err
    with pytest.raises(ValueError):
        selfsigned.alternative_name("-x.lan")


@pytest.mark.timeout(60)
async def test_a_selfsigned_broker_is_verified_by_name_and_address(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    hosts = ["--host", "localhost", "--host", "127.0.0.1"]
    assert main(["tls-selfsigned", *hosts, "--days", "10", "--out", str(out)]) == 0
    path = tmp_path / "broker.toml"
    path.write_text(
        '[server]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
        "[ingest]\nendpoints = []\n[control]\nendpoints = []\n"
    )
    context = ssl.create_default_context(cafile=str(out / "cert.pem"))
    with BrokerProcess(path, ssl_context=context) as broker:
        for host in ("localhost", "127.0.0.1"):
            with trio.fail_after(5):
                stream = await trio.open_ssl_over_tcp_stream(
                    host, broker.port, ssl_context=context, https_compatible=True
                )
                await stream.do_handshake()  # verifies the name or address
                assert stream.selected_alpn_protocol() is None  # we offered none
                await stream.aclose()
        # The client library, not trusting it, says so at once (not as a silent broker).
        from broker import client as broker_client
        from broker.client.errors import ConnectError

        with trio.fail_after(5), pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            async with broker_client.connect(f"wss://127.0.0.1:{broker.port}/ws", reconnect=False):
                pass
        assert "expires in 9 day(s): renew it" in broker.logs()  # (10 days less an hour)
        assert health(broker)["tls"]["not_after"].startswith(str(dt.date.today().year)[:3])
        wrong = ssl.create_default_context(cafile=str(out / "cert.pem"))
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
                wrong.wrap_socket(raw, server_hostname="elsewhere.lan")


# -- the direct-write fast path over TLS ----------------------------------------------


async def test_direct_writes_over_tls_finish_with_the_same_bytes() -> None:
    """`direct_access` finds a `TlsStream`'s SSLSocket; a frame larger than the socket
    takes makes OpenSSL answer "want write" part-way, the whole frame becomes the rest
    (OpenSSL must be given the same bytes again) and `TlsStream.send_all` finishes it:
    frames and trio-websocket's own messages arrive whole and in order."""
    from trio_websocket import ConnectionClosed, wrap_server_stream

    from broker.core.camera import Camera, CameraInfo
    from broker.core.frame import Frame
    from broker.core.subscriber import Subscriber
    from broker.serve import wsframes
    from broker.serve.delivery import DirectWriter
    from broker.serve.tlsstream import TlsStream

    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    big = os.urandom(4 << 20)  # far more than the socket buffers hold
    rests: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        tls = TlsStream.wrap(stream, server_context)
        async with tls, trio.open_nursery() as nursery:
            await tls.do_handshake()
            ws = await (await wrap_server_stream(nursery, tls)).accept()
            access = wsframes.direct_access(ws)
            assert access is not None
            lock, sock = access
            assert sock is tls.tls
            subscriber = Subscriber(Camera(CameraInfo("c", "c", 1, 1)), "client", 2)
            writer = DirectWriter(lock, sock, subscriber, Frame.websocket_message)
            for payload in (b"small", big):  # one buffer; two (header, payload)
                assert writer(Frame("c", 0, 0.0, 1, 1, "jpeg", payload, 0.0))
                if writer.inflight is not None:
                    rests.append(sum(len(part) for part in writer.inflight[1]))
                    await writer.finish(wsframes.transport(ws), writer.inflight[1])
                    writer.inflight = None
                assert lock.value == 1
            await ws.send_message("text from trio-websocket")
            with pytest.raises(ConnectionClosed):
                await ws.get_message()  # until the client closes
            nursery.cancel_scope.cancel()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            url = f"wss://127.0.0.1:{port}/"
            context = client_context(ca)
            async with open_websocket_url(url, ssl_context=context, max_message_size=8 << 20) as ws:
                assert await ws.get_message() == b"small"
                assert await ws.get_message() == big
                assert await ws.get_message() == "text from trio-websocket"
            nursery.cancel_scope.cancel()
    # The header went out; OpenSSL wanted to write while encrypting the payload, so the
    # rest is that whole buffer, offered again from its start.
    assert rests == [len(big)]


# -- pure parts ---------------------------------------------------------------------


def test_certificates_reload_once_the_files_settle(tmp_path: Path) -> None:
    from broker.serve.tls import Certificates, Handshakes

    ca = trustme.CA()
    first = issue(ca, tmp_path)
    certificates = Certificates(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert certificates.stats.not_after is not None
    context = certificates.context
    assert not certificates.poll()  # nothing changed
    second = issue(ca, tmp_path)
    assert second != first
    assert not certificates.poll()  # changed: wait one more look (a renewal writes two files)
    assert certificates.poll()  # settled: loaded
    assert certificates.context is not context and certificates.stats.reloads == 1
    (tmp_path / "key.pem").write_text("broken\n")
    assert not certificates.poll() and not certificates.poll()  # refused, counted
    assert certificates.stats.reload_failures == 1
    assert not certificates.reload("SIGHUP") and certificates.stats.reload_failures == 2
    assert certificates.stats.reloads == 1  # the pair loaded second still serves

    handshakes = Handshakes(certificates, 1.0, port=8443)
    host = handshakes._host
    assert host(b"GET / HTTP/1.1\r\nHost: cams.lan:8765\r\n\r\n") == "cams.lan:8765"
    assert host(b"GET / HTTP/1.1\r\nhost: [fe80::1]:8765\r\n\r\n") == "[fe80::1]:8765"
    assert host(b"GET / HTTP/1.1\r\nHost: <script>x</script>\r\n\r\n") == "HOST:8443"
    assert host(b"GET / HTTP/1.1\r\n") == "HOST:8443"
