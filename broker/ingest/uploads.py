"""Images that producers upload over HTTP : checked, then
published as the camera's next frame (`accept_upload`). Synchronous; the HTTP edge
only reads the body and answers.

The body is either the image itself, with ``Content-Type: image/jpeg|png|webp|bmp``,
or the one file of a ``multipart/form-data`` form. The data must be an image of the
declared type: magic bytes; then the size its header declares, read here without
Pillow and checked against the caps (``ingest.max_width``, ``max_height``); only then
Pillow reads the header (never the pixels) to confirm it is an image. Pillow can raise
almost anything on hostile data (``DecompressionBombError`` is neither an ``OSError``
nor a ``ValueError``): every exception there means "not an image".

Uploaded frames are numbered per camera from 0 (``Camera.upload_seq``), counting only
the frames the hub took.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

from PIL import Image

from broker.core.frame import Frame
from broker.core.hub import Hub, Outcome
from broker.protocol.results import ERRORS
from broker.protocol.wire import CAMERA_ID, FORMATS, MAX_DIMENSION, sniff_format

PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}


@dataclass(frozen=True, slots=True)
class Upload:
    format: str
    data: bytes
    width: int
    height: int


class UploadError(Exception):
    """An upload refused: ``code`` (from `broker.protocol.results.ERRORS`) and its HTTP
    ``status``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = ERRORS[code].status, code


def accept_upload(
    hub: Hub,
    camera_id: str,
    content_type: str,
    body: bytes,
    max_width: int = MAX_DIMENSION,
    max_height: int = MAX_DIMENSION,
) -> Frame:
    """Check an upload for ``camera_id`` and publish it; the frame, or `UploadError`:
    404 ``unknown_camera`` (an unconfigured camera, unless unknown ones are accepted and
    the id is valid), the refusals of `parse_upload`, 503 ``too_many_cameras`` and 409
    ``stale_frame`` (`Hub.publish`)."""
    may_appear = hub.accept_unknown and CAMERA_ID.fullmatch(camera_id)
    if camera_id not in hub.cameras and not may_appear:
        raise UploadError("unknown_camera", f"no camera {camera_id!r}")
    image = parse_upload(content_type, body, max_width, max_height)
    camera = hub.cameras.get(camera_id)
    seq = camera.upload_seq if camera is not None else 0
    frame = Frame.received(
        camera_id, seq, time.time(), image.width, image.height, image.format, image.data
    )
    outcome = hub.publish(frame)
    if outcome is Outcome.UNKNOWN:
        raise UploadError("unknown_camera", f"no camera {camera_id!r}")
    if outcome is Outcome.FULL:
        raise UploadError(
            "too_many_cameras",
            "the broker holds ingest.max_cameras "
            f"({hub.max_cameras}) cameras already; try again later",
        )
    if outcome is Outcome.STALE:
        raise UploadError(
            "stale_frame",
            "the frame is older than the camera's newest by "
            "more than ingest.offline_after; it was not shown",
        )
    hub.cameras[camera_id].upload_seq = seq + 1
    return frame


def parse_upload(
    content_type: str,
    body: bytes,
    max_width: int = MAX_DIMENSION,
    max_height: int = MAX_DIMENSION,
) -> Upload:
    """The checked upload, or `UploadError`: 415 ``unsupported_media_type`` or
    ``not_an_image``, 413 ``image_too_large``, 400 ``bad_form``."""
    media, params = _media_type(content_type)
    if media == "multipart/form-data":
        media, body = _only_file(body, params.get("boundary", ""))
    declared = media.removeprefix("image/") if media.startswith("image/") else None
    if declared == "jpg":
        declared = "jpeg"
    if declared not in FORMATS:
        raise UploadError(
            "unsupported_media_type",
            "Content-Type must be image/jpeg, image/png, image/webp, image/bmp or "
            f"multipart/form-data with one such file, got {media[:60] or 'none'!r}",
        )
    found = sniff_format(body)
    if found != declared:
        raise UploadError(
            "not_an_image",
            f"declared {media[:60]} but the data is {found or 'not an image'}",
        )
    size = declared_size(declared, body)
    if size is None:
        raise UploadError("not_an_image", f"cannot read the size of the {declared} image")
    _check_size(*size, max_width, max_height)
    width, height = _pillow_size(declared, body)
    _check_size(width, height, max_width, max_height)  # Pillow may read a later header
    return Upload(declared, body, width, height)


def _check_size(width: int, height: int, max_width: int, max_height: int) -> None:
    if width < 1 or height < 1:
        raise UploadError("not_an_image", f"the image declares no area ({width}x{height})")
    if width > max_width or height > max_height:
        raise UploadError(
            "image_too_large",
            f"the image is {width}x{height} pixels; the limit is {max_width}x{max_height} "
            "(ingest.max_width x ingest.max_height)",
        )


def _pillow_size(declared: str, body: bytes) -> tuple[int, int]:
    """The size as Pillow reads it from the header; nothing is decoded. Our own size
    check came first, so Pillow's decompression-bomb warning is moot here (and a
    warning about a peer's file is not ours to print)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(body), formats=[PILLOW_FORMATS[declared]]) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:  # caps above Pillow's own limit
        message = f"the {declared} image is too large: {_brief(exc)}"
        raise UploadError("image_too_large", message) from None
    except Exception as exc:  # Pillow raises many unrelated types on hostile data
        raise UploadError(
            "not_an_image", f"cannot read the {declared} image: {_brief(exc)}"
        ) from None
    return width, height


def _brief(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- the size an image's header declares, without Pillow -----------------------------


def declared_size(format: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header of ``data`` (an image of ``format`` by its magic
    bytes) declares them, or None when the header is cut short or malformed. Total:
    never raises."""
    reader = {"jpeg": _jpeg_size, "png": _png_size, "webp": _webp_size, "bmp": _bmp_size}
    try:
        return reader[format](memoryview(data))
    except (IndexError, ValueError, KeyError):  # a header cut short
        return None


def _png_size(data: memoryview) -> tuple[int, int] | None:
    # Signature (8), then the IHDR chunk: length (4), b"IHDR", width (4), height (4).
    if len(data) < 24 or data[12:16].tobytes() != b"IHDR":
        return None
    return _be(data[16:20]), _be(data[20:24])


# Start-of-frame markers (baseline, progressive, lossless...); not DHT, JPG or DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: memoryview) -> tuple[int, int] | None:
    """The size in the first start-of-frame segment before the first scan."""
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a scan (or an end) before any frame header
            return None
        length = _be(data[i : i + 2])
        if length < 2:
            return None
        if marker in _SOF:
            # length (2), precision (1), height (2), width (2)
            if i + 7 > end:
                return None
            return _be(data[i + 5 : i + 7]), _be(data[i + 3 : i + 5])
        i += length
    return None


def _webp_size(data: memoryview) -> tuple[int, int] | None:
    # b"RIFF", size, b"WEBP", then the first chunk: fourcc (4), size (4), payload.
    chunk, payload = bytes(data[12:16]), data[20:30]
    if len(payload) < 10:
        return None
    if chunk == b"VP8 ":  # lossy: frame tag (3), start code 9d 01 2a, 14-bit sizes
        if payload[3:6].tobytes() != b"\x9d\x01\x2a":
            return None
        return _le(payload[6:8]) & 0x3FFF, _le(payload[8:10]) & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit width-1 and height-1
        if payload[0] != 0x2F:
            return None
        bits = _le(payload[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags (4), 24-bit canvas width-1 and height-1
        return _le(payload[4:7]) + 1, _le(payload[7:10]) + 1
    return None


def _bmp_size(data: memoryview) -> tuple[int, int] | None:
    # File header (14), then the DIB header: its size (4), then width and height.
    header = _le(data[14:18]) if len(data) >= 18 else 0
    if header == 12 and len(data) >= 22:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit
        return _le(data[18:20]), _le(data[20:22])
    if header >= 40 and len(data) >= 26:  # signed 32-bit; a negative height is top-down
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return width, abs(height)
    return None


def _be(data: memoryview) -> int:
    if not data:
        raise ValueError("cut short")
    return int.from_bytes(data, "big")


def _le(data: memoryview) -> int:
    if not data:
        raise ValueError("cut short")
    return int.from_bytes(data, "little")


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    media, *rest = content_type.split(";")
    params = {}
    for item in rest:
        key, _, value = item.strip().partition("=")
        params[key.lower()] = value.strip('"')
    return media.strip().lower(), params


def _only_file(body: bytes, boundary: str) -> tuple[str, bytes]:
    """The media type and content of the one file in a multipart/form-data body."""
    if not boundary:
        raise UploadError("bad_form", "multipart/form-data without a boundary")
    files = []
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise UploadError("bad_form", "a form part has no header end")
        headers = {}
        for line in head.decode("latin-1").strip().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "filename=" in headers.get("content-disposition", ""):
            files.append((headers.get("content-type", ""), content.removesuffix(b"\r\n")))
    if len(files) != 1:
        raise UploadError("bad_form", f"the form must carry exactly one file, got {len(files)}")
    media, _ = _media_type(files[0][0])
    return media, files[0][1]
