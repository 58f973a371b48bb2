"""`cameras.sources`: which kind `make_source` picks, and what each kind promises
without a camera (the device paths that need one are in test_camera_worker)."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from cameras.sources import Source, SourceError, make_source
from cameras.sources.capture import CaptureSource
from cameras.sources.folder import FolderSource
from cameras.sources.testpattern import TestPattern, TestPatternSource
from cameras.sources.v4l2 import V4L2Source


def test_make_source_picks_the_kind(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"")
    cases: list[tuple[Source, type[Source], str]] = [
        (make_source(None, "/dev/video0", None, 15, "jpeg"), V4L2Source, "device /dev/video0"),
        (
            make_source("test-pattern", None, (64, 48), 15, "jpeg"),
            TestPatternSource,
            "test pattern 64x48",
        ),
        (
            make_source("test-pattern", None, None, 15, "jpeg"),
            TestPatternSource,
            "test pattern 1280x720",
        ),
        (make_source(str(tmp_path), None, None, 15, "jpeg"), FolderSource, f"images in {tmp_path}"),
        (make_source(str(clip), None, None, 15, "jpeg"), CaptureSource, str(clip)),
        (
            make_source("rtsp://cam/stream", None, None, 15, "jpeg"),
            CaptureSource,
            "rtsp://cam/stream",
        ),
    ]
    for source, kind, description in cases:
        assert type(source) is kind and source.description == description


def test_a_device_index_is_never_a_file_even_if_one_has_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("0").write_bytes(b"")
    device = V4L2Source("0", size=None, fps=15, fmt="jpeg")
    assert device.device_path == "/dev/video0" and not device.is_file


def test_a_missing_device_or_file_fails_to_open_with_a_source_error(tmp_path: Path) -> None:
    for source in (
        V4L2Source("/dev/video99", size=None, fps=15, fmt="jpeg"),
        CaptureSource(str(tmp_path / "none.avi"), size=None, fps=15, fmt="jpeg"),
    ):
        with pytest.raises(SourceError, match="cannot open"):
            source.open()
        source.close()


def test_a_file_or_url_is_resized_in_software_and_the_pattern_redrawn() -> None:
    capture = CaptureSource("rtsp://cam/stream", size=None, fps=15, fmt="jpeg")
    capture.reconfigure((320, 240), 5, "png")
    assert (capture.size, capture.fps, capture.fmt, capture.capture) == ((320, 240), 5, "png", None)
    pattern = TestPatternSource(64, 48)
    pattern.reconfigure((32, 16), 5, "png")
    assert pattern.read().size == (32, 16) and pattern.description == "test pattern 32x16"


def test_a_folder_without_images_fails_and_one_with_them_cycles(tmp_path: Path) -> None:
    folder = FolderSource(tmp_path)
    with pytest.raises(SourceError, match="no images"):
        folder.open()
    for seq in range(2):
        cv2.imwrite(str(tmp_path / f"{seq}.png"), TestPattern(32, 16).draw(seq))
    folder.open()
    assert [folder.read().size for _ in range(3)] == [(32, 16)] * 3
    assert folder.index == 3
