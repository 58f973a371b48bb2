"""The images of a folder, in name order, cycled: a camera made of stills."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2

from cameras.sources import Capture, Source, SourceError

log = logging.getLogger("camera-worker")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class FolderSource(Source):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"images in {folder}"
        self.paths: list[Path] = []
        self.index = 0
        self.unreadable: set[Path] = set()  # logged once each, then skipped

    def open(self) -> None:
        self.unreadable.clear()  # a reopen gives replaced files another chance
        try:
            self.paths = sorted(
                p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
        except OSError as exc:
            raise SourceError(f"cannot read {self.folder}: {exc}") from None
        if not self.paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.folder}")

    def read(self) -> Capture:
        # One bad file must not stall the camera: skip it; fail only if none decode.
        for _ in range(len(self.paths)):
            path = self.paths[self.index % len(self.paths)]
            self.index += 1
            if path in self.unreadable:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return Capture(time.time(), image)
            log.warning("cannot decode %s; skipping it", path)
            self.unreadable.add(path)
        raise SourceError(f"none of the images in {self.folder} can be decoded")
