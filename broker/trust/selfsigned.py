"""``broker tls-selfsigned``: a self-signed certificate and key for a LAN deployment.

`generate` is pure (a key and a certificate as PEM bytes, for the names and addresses
given as subject alternative names); `write` puts them in a folder, the key readable by
its owner only, each file replaced atomically (a running broker reloads them, see
`broker.serve.tls`); `instructions` says how to use and trust the result.

The certificate is its own trust anchor (basicConstraints CA, path length 0), as
``openssl req -x509`` makes one: browsers and operating systems accept it once it is
imported as an authority. The key is ECDSA P-256: every current browser takes it and
it is quick to handshake.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 825  # the longest validity Apple platforms accept for a TLS server certificate
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True, slots=True)
class SelfSigned:
    cert_pem: bytes
    key_pem: bytes
    spki_sha256: str  # base64 SHA-256 of the public key: what Chromium and HPKP-style pins take
    serial: int
    not_after: dt.datetime


def alternative_name(host: str) -> x509.GeneralName:
    """An IP address or DNS name for the subjectAltName; ValueError says what is wrong."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if len(host) > 253 or not _DNS_NAME.fullmatch(host):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return x509.DNSName(host.lower())


def generate(
    hosts: list[str], days: int = DEFAULT_DAYS, now: dt.datetime | None = None
) -> SelfSigned:
    """A fresh key and a certificate for ``hosts`` (names and IP addresses, the first
    also the subject's common name), valid from an hour ago for ``days``."""
    if not hosts:
        raise ValueError("give at least one --host")
    names = [alternative_name(host) for host in hosts]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Camera Broker (self-signed)"),
        ]
    )
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=1)  # clocks differ a little
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SelfSigned(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        base64.b64encode(hashlib.sha256(spki).digest()).decode(),
        cert.serial_number,
        cert.not_valid_after_utc,
    )


def write(made: SelfSigned, folder: Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``cert.pem`` (0644) and ``key.pem`` (0600) into ``folder`` (created 0700 if
    missing). Existing files are kept unless ``force``: FileExistsError names them."""
    folder = folder.absolute()
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    present = [str(path) for path in (cert, key) if path.exists()]
    if present and not force:
        raise FileExistsError(f"{', '.join(present)} already exist(s); --force replaces them")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace(key, made.key_pem, 0o600)  # the key first: a broker reloads when both settled
    _replace(cert, made.cert_pem, 0o644)
    return cert, key


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file with ``mode`` from the start, then rename it over
    ``path``: no reader ever sees half a file, and the key is never readable by others."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def instructions(made: SelfSigned, cert: Path, key: Path, hosts: list[str]) -> str:
    """What to put in the config, and how clients come to trust the certificate."""
    first = hosts[0]
    host = f"[{first}]" if ":" in first else first
    return f"""\
wrote {cert} and {key} (the key readable by you only)
  names: {", ".join(hosts)}
  serial {made.serial:x}, valid until {made.not_after:%Y-%m-%d}
  public key (SPKI) SHA-256: {made.spki_sha256}

1. In the broker's config (a relative path is taken from the config file's folder):

   [server]
   tls_cert = "{cert}"
   tls_key = "{key}"

   The port then serves only https:// and wss://, e.g. https://{host}:8765/ and
   wss://{host}:8765/cameras/ID. Replacing the two files later is picked up without a
   restart (within seconds, or at once with SIGHUP).

2. Make clients trust {cert.name} (it is its own authority; the key never leaves this host):
   - Debian/Ubuntu (curl, Python, Grafana's server):
       sudo cp {cert} /usr/local/share/ca-certificates/camera-broker.crt
       sudo update-ca-certificates
   - Chrome/Chromium on Linux (per user):
       certutil -d sql:$HOME/.pki/nssdb -A -t "C,," -n camera-broker -i {cert}
   - Firefox: Settings > Privacy & Security > Certificates > View Certificates >
     Authorities > Import, tick "Trust this CA to identify websites".
   - macOS: sudo security add-trusted-cert -d -r trustRoot \\
       -k /Library/Keychains/System.keychain {cert}
   - Windows (admin): certutil -addstore -f Root {cert.name}
   - Grafana: the Live Image Panel and MJPEG Text panels connect from the viewer's
     browser, so trust the certificate in the browsers that open the dashboards
     (above). A Prometheus scraping /metrics: tls_config: {{ca_file: {cert.name}}}.
   - The Python client: ssl.create_default_context(cafile="{cert.name}");
     broker ctl: SSL_CERT_FILE={cert} broker ctl --url wss://{host}:8765/ws list
"""
