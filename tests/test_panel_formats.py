"""Headless Chromium doing what the Grafana Live Image Panel does with TIFF and LZ4
frames (its src/LiveImagePanel.tsx at commit 21bdc1d, "add LZ4"): TIFF sniffed by its
magic bytes (``auto``) or forced (``image/tiff``) and decoded with UTIF (``decode``,
``decodeImage``, ``toRGBA8``); ``image/lz4``: ``lz4js.decompress``, the size guessed from
the length among four, a 54-byte top-down BMP header in front, ``createImageBitmap``.
The decoders are the npm packages the panel pins (tests/js, installed by .ci/run); the
page checks the pixels it draws, the camera's frames and then its "No Data" image."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import pytest
from test_formats import SIZE, Producer, external, external_broker, still

from cameras.encoding import encode

if TYPE_CHECKING:
    from playwright.sync_api import Page

JS = Path(__file__).resolve().parent / "js" / "node_modules"

# The panel's code for these paths, as at commit 21bdc1d (React and the status bar left
# out; DEBUG.error records instead of logging).
PANEL = r"""
const createBmpHeader = (width, height) => {
  const rowPadding = (4 - (width * 3) % 4) % 4;
  const fileSize = 54 + (width * 3 + rowPadding) * height;
  const header = new Uint8Array(54);
  const view = new DataView(header.buffer);
  header[0] = 0x42; // B
  header[1] = 0x4D; // M
  view.setUint32(2, fileSize, true); // File size
  view.setUint32(10, 54, true); // Offset
  view.setUint32(14, 40, true); // Header size
  view.setInt32(18, width, true); // Width
  view.setInt32(22, -height, true); // Height (negative for top-down)
  view.setUint16(26, 1, true); // Planes
  view.setUint16(28, 24, true); // BPP
  return header;
};
const guessDimensions = (byteLength) => {
  const pixels = byteLength / 3;
  if (pixels === 3840 * 2160) { return { w: 3840, h: 2160 }; }
  if (pixels === 1920 * 1080) { return { w: 1920, h: 1080 }; }
  if (pixels === 1280 * 720) { return { w: 1280, h: 720 }; }
  if (pixels === 640 * 480) { return { w: 640, h: 480 }; }
  return null;
};
window.panels = {};
function panel(name, wsUrl, imageFormat, points) {
  const canvas = document.createElement("canvas");
  document.body.appendChild(canvas);
  const state = (window.panels[name] = { drawn: 0, errors: [], width: 0, height: 0, pixels: [] });
  const DEBUG = { error: (...args) => state.errors.push(args.map(String).join(" ")) };
  const drawBitmap = (bitmap) => {
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    const ctx = canvas.getContext("2d", { alpha: false, willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    state.drawn += 1;
    state.width = canvas.width;
    state.height = canvas.height;
    state.pixels = points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
  };
  const getImageMimeType = (data) => {
    if (imageFormat !== "auto") { return imageFormat; }
    const bytes = new Uint8Array(data.slice(0, 4));
    if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) { return "image/jpeg"; }
    if (bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) { return "image/png"; }
    if ((bytes[0] === 0x49 && bytes[1] === 0x49 && bytes[2] === 0x2A && bytes[3] === 0x00) ||
        (bytes[0] === 0x4D && bytes[1] === 0x4D && bytes[2] === 0x00 && bytes[3] === 0x2A)) {
      return "image/tiff";
    }
    return "image/jpeg";
  };
  const decodeTiffToBitmap = (data) => new Promise((resolve, reject) => {
    try {
      const ifds = UTIF.decode(data);
      if (!ifds || ifds.length === 0) { reject(new Error("Invalid TIFF data")); return; }
      const page = ifds[0];
      UTIF.decodeImage(data, page);
      const rgba = UTIF.toRGBA8(page);
      const imageData = new ImageData(new Uint8ClampedArray(rgba), page.width, page.height);
      createImageBitmap(imageData).then(resolve).catch(reject);
    } catch (e) { reject(e); }
  });
  const ws = new WebSocket(wsUrl);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => {
    if (!(event.data instanceof ArrayBuffer)) { return; }
    const data = event.data;
    if (imageFormat === "image/lz4") {
      try {
        const decompressed = lz4.decompress(new Uint8Array(data));
        const dims = guessDimensions(decompressed.byteLength);
        if (!dims) { throw new Error(`Unknown raw image dimensions: ${decompressed.byteLength} bytes`); }
        const header = createBmpHeader(dims.w, dims.h);
        const bmpData = new Uint8Array(header.byteLength + decompressed.byteLength);
        bmpData.set(header);
        bmpData.set(decompressed, header.byteLength);
        const blob = new Blob([bmpData], { type: "image/bmp" });
        createImageBitmap(blob).then(drawBitmap).catch(e => DEBUG.error("Bitmap creation failed", e));
      } catch (e) { DEBUG.error("LZ4 Decompression error", e); }
      return;
    }
    const mimeType = getImageMimeType(data);
    if (mimeType === "image/tiff") {
      decodeTiffToBitmap(data).then(drawBitmap).catch(e => DEBUG.error("TIFF decode failed", e));
    } else {
      const blob = new Blob([data], { type: mimeType });
      createImageBitmap(blob).then(drawBitmap).catch(e => DEBUG.error("Bitmap creation failed", e));
    }
  };
}
"""

# Points sampled on the canvas: the red corner of the stills (dark grey in "No Data").
POINTS = [(2, 2), (100, 50), (320, 240), (639, 479)]
NO_DATA_GREY = [38, 38, 42]


def commonjs(name: str, path: Path) -> str:
    """``path`` (a CommonJS module) registered under ``name`` for the page's `require`."""
    return (
        f"__modules[{name!r}] = function (module, exports, require) {{\n{path.read_text()}\n}};\n"
    )


def page_scripts() -> str:
    """UTIF (a global, as in a browser) and lz4js (CommonJS, behind a tiny require)."""
    lz4js = JS / "lz4js"
    loader = (
        "const __modules = {}, __cache = {};\n"
        + commonjs("util", lz4js / "util.js")
        + commonjs("xxh32", lz4js / "xxh32.js")
        + commonjs("lz4", lz4js / "lz4.js")
        + "function __require(name) {\n"
        "  const key = name.replace('./', '').replace('.js', '');\n"
        "  if (!(key in __cache)) { const module = { exports: {} }; __cache[key] = module.exports;\n"
        "    __modules[key](module, module.exports, __require); __cache[key] = module.exports; }\n"
        "  return __cache[key];\n}\n"
        "const lz4 = __require('lz4');\n"
    )
    return (
        f"<script>{(JS / 'utif' / 'UTIF.js').read_text()}</script>\n"
        f"<script>{loader}</script>\n<script>{PANEL}</script>"
    )


@contextmanager
def streaming(producer: Producer, frames: dict[str, tuple[str, bytes]]) -> Iterator[None]:
    """Each camera's frame 10 times a second until the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for camera, (fmt, data) in frames.items():
                producer.send(camera, fmt, data)
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.timeout(120)
def test_panel_renders_tiff_and_lz4_cameras_and_their_no_data(tmp_path: Path, page: Page) -> None:
    assert JS.is_dir(), "the panel's decoders are missing: npm ci --prefix tests/js (.ci/run does)"
    image = still(3)
    expected = [list(int(c) for c in image[y, x][::-1]) for x, y in POINTS]  # BGR → RGB
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    expected_grey = [[int(grey[y, x])] * 3 for x, y in POINTS]
    cameras = external("tf", "tiff") + external("tg", "tiff") + external("lz", "lz4")
    with external_broker(tmp_path, cameras) as (broker, producer):
        base = f"ws://127.0.0.1:{broker.port}/cameras/"
        page.set_content("<body>" + page_scripts() + "</body>")
        assert page.evaluate("typeof UTIF.decode === 'function' && typeof lz4.decompress")
        for name, camera, mode in (
            ("tiff-auto", "tf", "auto"),
            ("tiff-forced", "tf", "image/tiff"),
            ("tiff-16-bit-grey", "tg", "auto"),
            ("lz4", "lz", "image/lz4"),
        ):
            page.evaluate(
                "([name, url, mode, points]) => panel(name, url, mode, points)",
                [name, base + camera, mode, POINTS],
            )
        frames = {
            "tf": ("tiff", encode(image, "tiff", 80)),
            "tg": ("tiff", encode(image, "tiff", 80, tiff_depth=16)),
            "lz": ("lz4", encode(image, "lz4", 80)),
        }
        with streaming(producer, frames):
            page.wait_for_function(
                "Object.values(window.panels).every((p) => p.drawn >= 10)", timeout=30_000
            )
            panels = page.evaluate("window.panels")
        for name, state in panels.items():
            assert state["errors"] == [], (name, state["errors"])
            assert (state["width"], state["height"]) == SIZE, name
            wanted = expected_grey if name == "tiff-16-bit-grey" else expected
            assert state["pixels"] == wanted, name  # lossless: the very pixels
        # The cameras stop: each panel draws the "No Data" image in its own mode.
        page.wait_for_function(
            f"Object.values(window.panels).every((p) => p.pixels[0].join() === '{','.join(map(str, NO_DATA_GREY))}')",
            timeout=15_000,
        )
        panels = page.evaluate("window.panels")
        for name, state in panels.items():
            assert state["errors"] == [], (name, state["errors"])
            assert (state["width"], state["height"]) == SIZE, name


@pytest.mark.timeout(90)
def test_viewer_page_shows_raw_format_cameras_as_jpegs(tmp_path: Path, page: Page) -> None:
    """The viewer page's tiles are <img>s: an LZ4 and a TIFF camera come as the JPEGs the
    broker derives (?format=jpeg), live."""
    from procs import BrokerProcess, synthetic_camera, write_config

    cameras = synthetic_camera("lz", 640, 480, 10).replace(
        "fps = 10\n", 'fps = 10\nformat = "lz4"\n'
    ) + synthetic_camera("tf", 320, 240, 10).replace("fps = 10\n", 'fps = 10\nformat = "tiff"\n')
    with BrokerProcess(write_config(tmp_path, cameras)) as broker:
        broker.wait_online("lz", "tf")
        assert {c["format"] for c in broker.cameras().values()} == {"lz4", "tiff"}
        page.goto(broker.url + "/")
        page.wait_for_function(
            "[...document.querySelectorAll('.tile')].every((t) => Number(t.dataset.frames) >= 5)"
            " && [...document.querySelectorAll('.tile img')].map((i) => i.naturalWidth).join()"
            " === '640,320'"
        )
