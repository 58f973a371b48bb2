"""Checking images that producers upload over HTTP (seed 003's producers). Pure.

The body is either the image itself, with ``Content-Type: image/jpeg|png|webp|bmp``,
or the one file of a ``multipart/form-data`` form. The data must be an image of the
declared type (magic bytes, then Pillow reading its header for the size).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from cameras.wire import FORMATS, sniff_format


@dataclass(frozen=True, slots=True)
class Upload:
    format: str
    data: bytes
    width: int
    height: int


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def parse_upload(content_type: str, body: bytes) -> Upload:
    media, params = _media_type(content_type)
    if media == "multipart/form-data":
        media, body = _only_file(body, params.get("boundary", ""))
    declared = media.removeprefix("image/") if media.startswith("image/") else None
    if declared == "jpg":
        declared = "jpeg"
    if declared not in FORMATS:
        raise UploadError(
            415, "unsupported_media_type",
            "Content-Type must be image/jpeg, image/png, image/webp, image/bmp or "
            f"multipart/form-data with one such file, got {media or 'none'!r}",
        )  # fmt: skip
    found = sniff_format(body)
    if found != declared:
        raise UploadError(
            415, "not_an_image", f"declared {media} but the data is {found or 'not an image'}"
        )
    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UploadError(415, "not_an_image", f"cannot read the {declared} image: {exc}") from None
    return Upload(declared, body, width, height)


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
        raise UploadError(400, "bad_form", "multipart/form-data without a boundary")
    files = []
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise UploadError(400, "bad_form", "a form part has no header end")
        headers = {}
        for line in head.decode("latin-1").strip().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "filename=" in headers.get("content-disposition", ""):
            files.append((headers.get("content-type", ""), content.removesuffix(b"\r\n")))
    if len(files) != 1:
        raise UploadError(
            400, "bad_form", f"the form must carry exactly one file, got {len(files)}"
        )
    media, _ = _media_type(files[0][0])
    return media, files[0][1]
