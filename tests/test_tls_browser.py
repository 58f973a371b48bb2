"""Headless Chromium over TLS: the viewer page over https and the Live Image Panel
imitation over wss (from an https page, as an https Grafana would), reconnecting after
a broker restart on the same port with the same certificate.

Chromium is told to accept the test certificate by its public key
(``--ignore-certificate-errors-spki-list``): that skips only the question of who
issued it; the TLS handshake, with that key, is real, and any other certificate is
still refused (checked)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from conftest import CHROMIUM, CHROMIUM_ARGS
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from procs import BrokerProcess
from test_browser import open_panel, wait_for_more_images
from test_tls import client_context, issue, tls_config

from broker import config as configuration
from broker import grafana

if TYPE_CHECKING:
    from playwright.sync_api import Page


def spki_hash(cert_pem: bytes) -> str:
    """Base64 SHA-256 of a certificate's public key: what Chromium pins."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    ca = trustme.CA()
    issue(ca, tmp_path)
    broker = BrokerProcess(tls_config(tmp_path), ssl_context=client_context(ca))
    try:
        yield broker
    finally:
        if broker.process is not None:
            broker.stop()


@pytest.fixture
def tls_page(tls_broker: BrokerProcess) -> Iterator[Page]:
    """A page in a fresh Chromium that accepts the broker's certificate by its key."""
    from playwright.sync_api import sync_playwright

    pin = spki_hash((tls_broker.config.parent / "cert.pem").read_bytes())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
        )
        try:
            # Like conftest's `page`: wait_for_function evaluates strings, which the
            # viewer page's Content-Security-Policy forbids once it has to poll.
            page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


@pytest.mark.timeout(120)
def test_viewer_page_over_https(tls_broker: BrokerProcess, tls_page: Page) -> None:
    page = tls_page
    with tls_broker as broker:
        broker.wait_online("cam")
        page.goto(broker.url + "/")
        assert page.evaluate("location.protocol") == "https:"
        page.wait_for_function(
            "document.querySelectorAll('.dot.live').length === 1 && "
            "document.querySelector('.tile img').naturalWidth === 320"
        )


@pytest.mark.timeout(120)
def test_panel_over_wss_from_an_https_page_reconnects_after_restart(
    tls_broker: BrokerProcess, tls_page: Page
) -> None:
    page = tls_page
    broker = tls_broker.start()
    broker.wait_online("cam")
    # The wsUrl `broker grafana --public-url https://...` writes, opened from an https
    # page: an https Grafana may open wss:// only.
    dashboard = grafana.live_dashboard(configuration.load(broker.config), broker.url)
    url = dashboard["panels"][0]["options"]["wsUrl"]
    assert url == f"wss://127.0.0.1:{broker.port}/cameras/cam"
    page.goto(broker.url + "/healthz")
    open_panel(page, url)
    assert page.evaluate("location.protocol") == "https:"
    loaded = wait_for_more_images(page, 5)
    assert page.evaluate("window.width") == 320
    # Restart on the same port (BrokerProcess keeps it; the listener sets SO_REUSEADDR)
    # with the same certificate: the panel reconnects by itself.
    port = broker.port
    assert broker.stop() == 0
    page.wait_for_function("window.closes.length >= 1")
    assert page.evaluate("window.closes[0]") == 1001
    before = page.evaluate("window.loaded")
    assert before >= loaded
    broker.start()
    assert broker.port == port
    broker.wait_online("cam")
    wait_for_more_images(page, before + 5)


@pytest.mark.timeout(120)
def test_chromium_still_refuses_another_certificate(tmp_path: Path, tls_page: Page) -> None:
    """The pin is for the broker's key only: a broker with another certificate fails the
    handshake in the same browser (the test above is not passing by accident)."""
    other = tmp_path / "other"
    other.mkdir()
    ca = trustme.CA()
    issue(ca, other)
    page = tls_page
    with BrokerProcess(tls_config(other), ssl_context=client_context(ca)) as broker:
        with pytest.raises(Exception, match="ERR_CERT"):
            page.goto(broker.url + "/healthz")
