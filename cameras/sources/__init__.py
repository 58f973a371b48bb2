"""Where frames come from, one module per kind: `testpattern` (synthetic), `capture` (a
video file or an rtsp/http URL through OpenCV), `v4l2` (a camera device) and `folder` (a
folder of images). This package holds what they share: `Source`, `Capture`,
`SourceError`, and `make_source`, which picks the kind from the worker's options.

A source is opened, read until it fails, and closed; the worker reopens a failed
source with backoff. ``read`` returns a `Capture`: a BGR image, or (MJPEG passthrough)
the camera's own JPEG bytes, forwarded untouched.

Settings changed while running reach a source through `Source.reconfigure` (size, fps,
format: what it should deliver if it can; the worker converts whatever else arrives) and
`Source.set_controls` (image settings a V4L2 device applies itself; the worker applies
the rest in software, see `cameras.adjust`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import cv2.typing

# A BGR image (uint8, height x width x 3) as OpenCV hands it out: a numpy array.
Image: TypeAlias = "cv2.typing.MatLike"
Size = tuple[int, int]  # width, height


class SourceError(Exception):
    """The source cannot deliver (missing device, unreachable URL, unreadable file)."""


@dataclass(slots=True)
class Capture:
    captured_at: float
    image: Image | None = None  # BGR
    jpeg: bytes | None = None  # the camera's own MJPEG frame, forwarded as is
    jpeg_size: Size = (0, 0)

    @property
    def size(self) -> Size:
        if self.image is not None:
            return self.image.shape[1], self.image.shape[0]
        return 0, 0


class Source:
    description = "source"
    size: Size | None = None  # the frame size, when known before a frame

    def open(self) -> None: ...

    def read(self) -> Capture:
        raise NotImplementedError

    def close(self) -> None: ...

    def reconfigure(self, size: Size | None, fps: float, fmt: str) -> None:
        """Deliver this from now on (and after a reopen) if you can. May raise
        `SourceError` when a reopen it needed failed."""

    def set_controls(self, settings: Mapping[str, Any]) -> frozenset[str]:
        """Apply image settings in hardware where possible: the keys applied."""
        return frozenset()


def make_source(
    source: str | None, device: str | None, size: Size | None, fps: float, fmt: str
) -> Source:
    """The source the worker's ``--source`` or ``--device`` names."""
    # Imported here: each kind imports this package for the base classes.
    from cameras.sources.capture import CaptureSource
    from cameras.sources.folder import FolderSource
    from cameras.sources.testpattern import TestPatternSource
    from cameras.sources.v4l2 import V4L2Source

    if device:
        return V4L2Source(device, size=size, fps=fps, fmt=fmt)
    assert source is not None
    if source == "test-pattern":
        return TestPatternSource(*(size or (1280, 720)))
    if Path(source).is_dir():
        return FolderSource(Path(source))
    return CaptureSource(source, size=size, fps=fps, fmt=fmt)
