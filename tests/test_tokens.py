"""Signed tokens, share links and the browser protections, against real broker
processes: JWT valid, expired, wrong signature, wrong camera, revoked, ``alg: none``, an
HS256 token signed with a JWKS public key; a static token beside JWTs; ``broker share``
links that work and stop working once revoked or once the secret is rotated; failed JWTs
throttled like wrong static tokens; the Origin check of state-changing requests with no
tokens; the security headers; and the log-leak fixture failing a test that logs a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from leaks import register
from procs import ROOT, BrokerProcess, synthetic_camera, wait_until, write_config
from rawws import RawWebSocket

from broker.trust.tokens import redact

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.timeout(60)

STATIC = "static-viewer-token-5b1e"  # a static [[tokens]] entry beside the signed ones
CAMERAS = '[[cameras]]\nid = "a"\n[[cameras]]\nid = "b"\n'  # external: no workers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"role": "viewer", "cameras": ["a"], "iat": now, "exp": now + 600, **extra}


def hs256(secret: bytes, **extra: Any) -> str:
    token = jwt.encode(claims(**extra), secret, algorithm="HS256")
    register(token)
    return token


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand: ``alg: none`` (no key) or HMAC with any bytes as the key,
    which PyJWT refuses to do with a public key (the attack it defends against)."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = b"" if key is None else hmac.new(key, head.encode(), hashlib.sha256).digest()
    return head + "." + b64(signature)


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes = b""
) -> tuple[int, Message, bytes]:
    """(status, headers, body) of a request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body or None, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as answer:
        with answer:
            return answer.code, answer.headers, answer.read()


def message(body: bytes) -> str:
    return str(json.loads(body)["message"])


# --- a broker with a static token, an HS256 secret and a revoked id ---


@pytest.fixture(scope="module")
def hs_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, bytes]]:
    folder = tmp_path_factory.mktemp("hs")
    secret = secrets.token_hex(32).encode()
    (folder / "jwt.secret").write_bytes(secret + b"\n")
    extra = (
        "[server]\nauth_failure_burst = 1000\n"
        '[security]\njwt_secret_file = "jwt.secret"\nrevoked = ["revoked-id-1"]\n'
        f'[[tokens]]\ntoken = "{STATIC}"\nrole = "viewer"\ncameras = ["b"]\n'
    )
    config = write_config(folder, CAMERAS, control=extra)
    with BrokerProcess(config, token=STATIC) as broker:
        yield broker, secret


def snapshot(broker: BrokerProcess, camera: str, token: str) -> tuple[int, bytes]:
    status, _, body = get(f"{broker.url}/cameras/{camera}/snapshot.jpg?token={token}")
    return status, body


def test_a_valid_hs256_token_grants_its_role_and_cameras(
    hs_broker: tuple[BrokerProcess, bytes],
) -> None:
    broker, secret = hs_broker
    token = hs256(secret, sub="wall display")
    status, body = snapshot(broker, "a", token)
    assert status == 200 and body.startswith(b"\xff\xd8")
    # Through the header as well; /api/cameras lists only its cameras.
    status, _, body = get(f"{broker.url}/api/cameras", {"Authorization": f"Bearer {token}"})
    assert status == 200 and [c["id"] for c in json.loads(body)] == ["a"]
    # Its camera list is enforced: 403, before anything is said about the camera.
    status, body = snapshot(broker, "b", token)
    assert status == 403 and "may not access camera 'b'" in message(body)
    # A viewer may not change settings.
    status, _, body = get(
        f"{broker.url}/api/cameras/a/settings?token={token}", method="PATCH", body=b"{}"
    )
    assert status == 403 and "needs an operator token" in message(body)
    # No cameras claim: every camera.
    every = jwt.encode({"role": "viewer", "exp": int(time.time()) + 60}, secret, "HS256")
    register(every)
    assert snapshot(broker, "b", every)[0] == 200


def test_a_static_token_works_beside_signed_ones(hs_broker: tuple[BrokerProcess, bytes]) -> None:
    broker, _ = hs_broker
    assert snapshot(broker, "b", STATIC)[0] == 200
    assert snapshot(broker, "a", STATIC)[0] == 403  # its own camera list
    assert snapshot(broker, "b", STATIC[:-1] + "x")[0] == 401


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: hs256(s, exp=int(time.time()) - 120), "expired"),  # beyond the 30 s skew
        (lambda s: hs256(s, nbf=int(time.time()) + 600), "not valid yet"),
        (lambda s: hs256(secrets.token_hex(32).encode()), "signature does not match"),
        (lambda s: hs256(s, jti="revoked-id-1"), "revoked"),
        (lambda s: hs256(s, role="admin"), "role claim must be viewer or operator"),
        (
            lambda s: hand_signed({"alg": "none", "typ": "JWT"}, claims(), None),
            "algorithm 'none' is not accepted",
        ),
        (
            lambda s: jwt.encode({"role": "viewer", "cameras": ["a"]}, s, "HS256"),
            "signed tokens must expire",
        ),
        (
            lambda s: jwt.encode(claims(), s, "HS512"),
            "algorithm 'HS512' is not accepted (accepted: HS256)",
        ),
    ],
    ids=["expired", "nbf", "wrong-signature", "revoked", "bad-role", "alg-none", "no-exp", "hs512"],
)
def test_refused_signed_tokens_get_401_with_the_reason(
    hs_broker: tuple[BrokerProcess, bytes], make: Callable[[bytes], str], reason: str
) -> None:
    broker, secret = hs_broker
    token = make(secret)
    register(token)
    status, headers, body = get(f"{broker.url}/cameras/a/snapshot.jpg?token={token}")
    assert status == 401, body
    assert reason in message(body)
    assert token not in body.decode() and 'error="invalid_token"' in headers["www-authenticate"]


def test_clock_skew_is_tolerated(hs_broker: tuple[BrokerProcess, bytes]) -> None:
    broker, secret = hs_broker
    token = hs256(secret, exp=int(time.time()) - 5)  # expired 5 s ago, skew 30 s
    assert snapshot(broker, "a", token)[0] == 200


# --- a broker with only a JWKS (RS256 and ES256 public keys) ---


@pytest.fixture(scope="module")
def jwks_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Any]]:
    folder = tmp_path_factory.mktemp("jwks")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, key, algorithm in (("rsa-1", rsa_key, "RS256"), ("ec-1", ec_key, "ES256")):
        jwk = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig"})
    (folder / "idp.jwks").write_text(json.dumps({"keys": keys}))
    extra = '[server]\nauth_failure_burst = 1000\n[security]\njwks_file = "idp.jwks"\n'
    config = write_config(folder, CAMERAS, control=extra)
    with BrokerProcess(config) as broker:
        yield broker, (rsa_key, ec_key)


def test_rs256_and_es256_tokens_from_a_jwks(jwks_broker: tuple[BrokerProcess, Any]) -> None:
    broker, (rsa_key, ec_key) = jwks_broker
    for kid, key, algorithm in (("rsa-1", rsa_key, "RS256"), ("ec-1", ec_key, "ES256")):
        token = jwt.encode(claims(sub="idp-user"), key, algorithm, headers={"kid": kid})
        register(token)
        assert snapshot(broker, "a", token)[0] == 200, algorithm
        assert snapshot(broker, "b", token)[0] == 403, algorithm
    # A key chosen by kid must be of the token's algorithm; an unknown kid is refused.
    wrong = jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "ec-1"})
    unknown = jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "nobody"})
    register(wrong, unknown)
    status, body = snapshot(broker, "a", wrong)
    assert status == 401 and "its key is for ES256, not RS256" in message(body)
    status, body = snapshot(broker, "a", unknown)
    assert status == 401 and "no key in security.jwks_file has its kid" in message(body)


def test_hs256_signed_with_the_public_key_is_refused(
    jwks_broker: tuple[BrokerProcess, Any],
) -> None:
    """The classic confusion: the attacker knows the public key and signs HS256 with it,
    hoping the server verifies HMAC with the same key bytes."""
    broker, (rsa_key, _) = jwks_broker
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = jwt.get_algorithm_by_name("RS256").to_jwk(rsa_key.public_key()).encode()
    for key in (pem, jwk):
        token = hand_signed({"alg": "HS256", "kid": "rsa-1"}, claims(role="operator"), key)
        register(token)
        status, body = snapshot(broker, "a", token)
        assert status == 401
        assert "algorithm 'HS256' is not accepted (accepted: RS256, ES256)" in message(body)


# --- what a signed token opened ends at its exp ---


async def test_streams_end_when_their_token_expires(tmp_path: Path) -> None:
    secret = secrets.token_hex(32).encode()
    (tmp_path / "jwt.secret").write_bytes(secret)
    extra = '[security]\njwt_secret_file = "jwt.secret"\nclock_skew = 0.0\n'
    config = write_config(tmp_path, synthetic_camera("a", 160, 120, 10), control=extra)
    with BrokerProcess(config, token=hs256(secret)) as broker:
        broker.wait_online("a")
        token = hs256(secret, exp=int(time.time()) + 3)
        ws, head = await RawWebSocket.connect(broker.port, f"/cameras/a?token={token}")
        mjpeg = urllib.request.urlopen(f"{broker.url}/cameras/a/mjpeg?token={token}", timeout=10)
        try:
            assert head.startswith(b"HTTP/1.1 101")
            frames, started = 0, time.monotonic()
            with trio.fail_after(10):
                while (received := await ws.receive()) is not None and received[0] == 2:
                    frames += 1
            assert received is not None and received[0] == 8  # a close frame
            assert int.from_bytes(received[1][:2], "big") == 1008
            assert frames > 0 and 1 < time.monotonic() - started < 6
            # MJPEG: the stream ends (the server closes the connection).
            assert (await trio.to_thread.run_sync(mjpeg.read)).startswith(b"--")
        finally:
            await ws.aclose()
            mjpeg.close()
        assert snapshot(broker, "a", token)[0] == 401


# --- failed signed tokens are throttled like wrong static ones ---


def test_failed_signed_tokens_lead_to_429(tmp_path: Path) -> None:
    secret = secrets.token_hex(32).encode()
    (tmp_path / "jwt.secret").write_bytes(secret)
    extra = (
        "[server]\nauth_failure_burst = 3\nauth_failure_rate = 0.01\n"
        '[security]\njwt_secret_file = "jwt.secret"\n'
    )
    config = write_config(tmp_path, CAMERAS, control=extra)
    with BrokerProcess(config) as broker:
        good = hs256(secret)
        bad = hs256(secret, exp=int(time.time()) - 3600)
        assert [snapshot(broker, "a", bad)[0] for _ in range(3)] == [401] * 3
        status, _, body = get(f"{broker.url}/cameras/a/snapshot.jpg?token={good}")
        assert status == 429 and "too many wrong tokens" in message(body)


# --- broker share ---


def share(config: Path, *args: str) -> dict[str, str]:
    command = [
        sys.executable,
        "-m",
        "broker",
        "share",
        "a",
        "--config",
        str(config),
        "--json",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    links = json.loads(done.stdout)
    register(links["token"])
    return links


async def first_frame(url: str) -> bytes:
    """The first binary message of a camera WebSocket at ``url`` (ws://host:port/path)."""
    port, path = int(url.split(":")[2].split("/")[0]), "/" + url.split("/", 3)[3]
    ws, head = await RawWebSocket.connect(port, path)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        with trio.fail_after(15):
            while True:
                received = await ws.receive()
                assert received is not None
                opcode, payload = received
                if opcode == 2:
                    return payload
    finally:
        await ws.aclose()


async def test_share_links_work_until_revoked_or_rotated(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text(secrets.token_hex(32) + "\n")
    extra = '[security]\njwt_secret_file = "jwt.secret"\n'
    camera = synthetic_camera("a", 320, 240, 10)
    config = write_config(tmp_path, camera, control=extra)
    broker = BrokerProcess(config)
    links = share(config, "--public-url", broker.url, "--ttl", "10m", "--role", "viewer")
    assert links["websocket"].startswith(f"ws://127.0.0.1:{broker.port}/cameras/a?token=eyJ")
    with broker:
        broker.token = links["token"]
        broker.wait_online("a")
        status, headers, body = get(links["snapshot"])
        assert status == 200 and headers["x-camera-online"] is None and body[:2] == b"\xff\xd8"
        frame = await first_frame(links["websocket"])
        assert frame[:2] == b"\xff\xd8"
        status, headers, body = get(links["viewer"])
        assert status == 200 and b"/viewer.js?token=" in body
        assert headers["referrer-policy"] == "no-referrer"
        # The viewer token may watch, not control.
        status, _, _ = get(
            links["snapshot"].replace("/cameras/a/snapshot.jpg", "/api/cameras/a/settings"),
            method="PATCH",
            body=b"{}",
        )
        assert status == 403
        # Rotating the secret revokes every link, without a restart.
        secret_file.write_text(secrets.token_hex(32) + "\n")
        wait_until(lambda: get(links["snapshot"])[0] == 401, 5, "old link still works")
        fresh = share(config, "--public-url", broker.url)
        another = share(config, "--public-url", broker.url)
        assert get(fresh["snapshot"])[0] == 200
        # Revoking one link: its jti in security.revoked, taken without a restart; the
        # streams open with it are cut too.
        url = fresh["websocket"]
        ws, head = await RawWebSocket.connect(broker.port, "/" + url.split("/", 3)[3])
        try:
            assert head.startswith(b"HTTP/1.1 101")
            revoked = f'revoked = ["{fresh["jti"]}"]\n'
            config.write_text(config.read_text().replace(extra, extra + revoked))
            with trio.fail_after(8):
                while (received := await ws.receive()) is not None and received[0] == 2:
                    pass
            assert received is not None and received[0] == 8
            assert int.from_bytes(received[1][:2], "big") == 1008
        finally:
            await ws.aclose()
        assert "its token is no longer valid" in broker.logs()
        status, _, body = get(fresh["snapshot"])
        assert status == 401 and "revoked" in message(body)
        assert get(another["snapshot"])[0] == 200
        # A config that has become invalid changes nothing: the revoked ids stay.
        config.write_text(config.read_text() + "\n[nonsense]\n")
        time.sleep(1.5)
        assert get(fresh["snapshot"])[0] == 401 and get(another["snapshot"])[0] == 200
        assert "changed but cannot be used" in broker.logs()
    config.write_text(config.read_text().replace("\n[nonsense]\n", ""))
    # And from the next start on.
    with BrokerProcess(config, port=broker.port):
        status, _, body = get(fresh["snapshot"])
        assert status == 401 and "revoked" in message(body)
        assert get(another["snapshot"])[0] == 200


@pytest.mark.timeout(120)
def test_viewer_page_works_under_its_policy_with_a_share_link(
    tmp_path: Path, strict_page: Page
) -> None:
    """Chromium enforcing the page's Content-Security-Policy: the page opened from a
    share link shows its camera, no policy violation is reported, and no request of the
    page carries a Referer (the URL holds the token)."""
    page = strict_page
    (tmp_path / "jwt.secret").write_text(secrets.token_hex(32))
    extra = '[security]\njwt_secret_file = "jwt.secret"\n'
    camera = synthetic_camera("a", 320, 240, 10) + synthetic_camera("b", 160, 120, 5)
    config = write_config(tmp_path, camera, control=extra)
    broker = BrokerProcess(config)
    links = share(config, "--public-url", broker.url)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    referers: list[str] = []
    page.on("request", lambda r: referers.append(r.headers.get("referer", "")))
    with broker:
        broker.token = links["token"]
        broker.wait_online("a")
        page.goto(links["viewer"])

        def shown() -> bool:
            return bool(page.evaluate("document.querySelector('.tile img')?.naturalWidth > 0"))

        wait_until(shown, 20, "no image on the viewer page")
        tiles = page.evaluate("[...document.querySelectorAll('.tile')].map(t => t.dataset.camera)")
        assert tiles == ["a"]  # the link's one camera
    assert not [p for p in problems if "Content Security Policy" in p], problems
    assert len(referers) >= 4 and not any(referers), referers


def test_share_refuses_without_a_secret_and_bad_arguments(tmp_path: Path) -> None:
    config = write_config(tmp_path, CAMERAS)
    base = [sys.executable, "-m", "broker", "share"]
    runs = [
        (["a", "--config", str(config)], "needs [security] jwt_secret_file"),
    ]
    (tmp_path / "s").write_text("x" * 40)
    with_secret = tmp_path / "s.toml"
    with_secret.write_text(config.read_text() + '\n[security]\njwt_secret_file = "s"\n')
    runs += [
        (["zz", "--config", str(with_secret)], "no camera 'zz' in the config (a, b)"),
        (["a", "--config", str(with_secret), "--ttl", "forever"], "--ttl: must be a duration"),
        (["a", "--config", str(with_secret), "--public-url", "ftp://x"], "--public-url: must"),
    ]
    for args, expected in runs:
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and expected in done.stderr, (args, done.stderr)


# --- no tokens: the Origin of state-changing requests; the headers ---


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    folder = tmp_path_factory.mktemp("open")
    extra = '[server]\ncors_origins = ["https://grafana.example"]\n'
    config = write_config(folder, synthetic_camera("a", 160, 120, 5), control=extra)
    with BrokerProcess(config) as broker:
        broker.wait_online("a")
        yield broker


def patch_settings(broker: BrokerProcess, origin: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    url = f"{broker.url}/api/cameras/a/settings"
    status, _, body = get(url, headers, "PATCH", b'{"brightness": 55}')
    return status, body


def test_cross_origin_changes_are_refused_without_tokens(open_broker: BrokerProcess) -> None:
    status, body = patch_settings(open_broker, "http://evil.example")
    assert status == 403
    assert "from a page of another origin ('http://evil.example') is refused" in message(body)
    status, _, body = get(
        f"{open_broker.url}/api/cameras/a/presets/day", {"Origin": "null"}, "POST"
    )
    assert status == 403
    status, _, body = get(f"{open_broker.url}/api/sessions", {"Origin": "http://x.test"}, "POST")
    assert status == 403
    # Reading stays open to any page (an <img> can show MJPEG anyway).
    status, _, _ = get(f"{open_broker.url}/api/cameras", {"Origin": "http://evil.example"})
    assert status == 200


def test_same_origin_listed_origin_and_no_origin_may_change(open_broker: BrokerProcess) -> None:
    port = open_broker.port
    for origin in (None, f"http://127.0.0.1:{port}", "https://grafana.example"):
        status, body = patch_settings(open_broker, origin)
        assert status == 200, (origin, body)
    status, body = patch_settings(open_broker, f"http://127.0.0.1:{port + 1}")
    assert status == 403


async def test_cross_origin_ws_may_watch_but_not_command(open_broker: BrokerProcess) -> None:
    ws, head = await RawWebSocket.connect(
        open_broker.port, "/ws", "Origin: http://evil.example\r\n"
    )
    try:
        assert head.startswith(b"HTTP/1.1 101")
        await ws.send(json.dumps({"type": "command", "camera": "a", "command": "get_status"}))
        await ws.send(json.dumps({"type": "list_cameras"}))
        by_type: dict[str, dict] = {}
        with trio.fail_after(10):
            while not {"error", "cameras"} <= by_type.keys():
                received = await ws.receive()
                assert received is not None
                if received[0] == 1:
                    answer = json.loads(received[1])
                    by_type[answer["type"]] = answer
        assert by_type["error"]["code"] == "forbidden"
        assert "page of another origin" in by_type["error"]["message"]
        assert [c["id"] for c in by_type["cameras"]["cameras"]] == ["a"]
    finally:
        await ws.aclose()


def test_security_headers(open_broker: BrokerProcess) -> None:
    status, headers, _ = get(open_broker.url + "/")
    assert status == 200
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    for path in ("/", "/viewer.js", "/api/cameras", "/cameras/a/snapshot.jpg", "/nothing"):
        _, headers, _ = get(open_broker.url + path)
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
    with urllib.request.urlopen(open_broker.url + "/cameras/a/mjpeg", timeout=10) as response:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


# --- keeping tokens out of the log ---


def test_redact() -> None:
    token = hs256(b"k" * 32)
    line = f"GET /cameras/a?fps=2&token={token}&x=1 Authorization: Bearer abc.def"
    assert (
        redact(line) == "GET /cameras/a?fps=2&token=[redacted]&x=1 Authorization: Bearer [redacted]"
    )
    assert redact(f"saw {token} here") == "saw [redacted] here"
    assert redact("nothing to hide") == "nothing to hide"


def test_the_leak_fixture_fails_a_test_that_logs_a_token(tmp_path: Path) -> None:
    """The fixture of tests/leaks.py, in a pytest of its own: a test that logs a JWT
    fails, one that logs a registered static token fails, a clean one passes."""
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
        "from leaks import no_token_in_logs  # noqa: F401\n"
    )
    token = jwt.encode({"exp": 1}, b"k" * 32, "HS256")
    (tmp_path / "test_leak.py").write_text(
        textwrap.dedent(f"""
        import logging
        from leaks import register

        def test_logs_a_jwt():
            logging.getLogger("broker.server").warning("GET /?token=%s", {token!r})

        def test_logs_a_static_token():
            register("static-secret-123")
            logging.getLogger("broker.server").error("token static-secret-123")

        def test_clean():
            logging.getLogger("broker.server").warning("GET /?token=[redacted]")
        """)
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    out = done.stdout
    assert done.returncode == 1, out
    assert "ERROR at teardown of test_logs_a_jwt" in out, out
    assert "ERROR at teardown of test_logs_a_static_token" in out, out
    assert "a token was logged" in out and "the token stat..." in out
    assert "3 passed, 2 errors" in out, out
    # The fixture's message shows only the start of what leaked (pytest's own report of
    # the captured log, below it, shows the line: it is the test's output).
    assert f"log record: a JWT {token[:12]}...\n" in out, out


# --- the config rules of the key files, and durations (pure) ---


def test_broker_check_refuses_unusable_key_files(tmp_path: Path) -> None:
    from broker.config import ConfigError, load

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(rsa_key))
    public = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(rsa_key.public_key()))
    cases = {
        b"short\n": ("jwt_secret_file", "holds 5 bytes; a secret needs at least 32"),
        b"not json": ("jwks_file", "is not JSON"),
        b'{"keys": []}': ("jwks_file", "must be a JWKS"),
        json.dumps({"keys": [private]}).encode(): ("jwks_file", "holds a private key"),
        json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode(): (
            "jwks_file",
            "only RSA and EC public keys",
        ),
        json.dumps({"keys": [public, public]}).encode(): ("jwks_file", "needs a kid"),
    }
    for content, (key, expected) in cases.items():
        (tmp_path / "keyfile").write_bytes(content)
        config = tmp_path / "b.toml"
        config.write_text(f'[security]\n{key} = "keyfile"\n')
        with pytest.raises(ConfigError) as raised:
            load(config)
        assert str(raised.value).startswith(f"security.{key}: {tmp_path / 'keyfile'} ")
        assert expected in str(raised.value), str(raised.value)
    config.write_text('[security]\njwt_secret_file = "missing"\n')
    with pytest.raises(ConfigError, match=r"security\.jwt_secret_file: .*cannot read"):
        load(config)
    # Resolved against the config file's folder, whatever the working directory.
    (tmp_path / "keyfile").write_text("s" * 32)
    config.write_text('[security]\njwt_secret_file = "keyfile"\nrevoked = ["x"]\n')
    security = load(config).security
    assert security.jwt_secret_file == str(tmp_path / "keyfile")
    assert security.revoked == ("x",)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800)]
)
def test_ttl(text: str, seconds: float) -> None:
    from broker.trust.tokens import parse_ttl

    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "8x", "367d", "h"])
def test_bad_ttl(text: str) -> None:
    from broker.trust.tokens import parse_ttl

    with pytest.raises(ValueError, match="must be a duration"):
        parse_ttl(text)


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("", "", True),  # no Origin: not a page
        ("http://cams.lan:8765", "cams.lan:8765", True),
        ("https://CAMS.lan:8765", "cams.lan:8765", True),  # one port is one server
        ("http://[::1]:8765", "[::1]:8765", True),
        ("https://grafana.example", "cams.lan:8765", True),  # server.cors_origins
        ("http://cams.lan:8766", "cams.lan:8765", False),
        ("http://cams.lan", "cams.lan:8765", False),
        ("null", "cams.lan:8765", False),
        ("http://evil.example", "", False),
        ("file://", "cams.lan:8765", False),
    ],
)
def test_origin_allowed(origin: str, host: str, allowed: bool) -> None:
    from broker.config import parse
    from broker.core.hub import Hub
    from broker.serve.access import Access
    from broker.serve.router import Router

    config = parse('[server]\ncors_origins = ["https://grafana.example"]\n')
    router = Router(config, Access([]), Hub([], offline_after=1.0))
    assert router.origin_allowed(origin, host) is allowed
