"""The pure parts of analytics, without processes: the analyzer protocol (total on any
input), the results the broker keeps (bounded, rate-limited, counts over analyzer
restarts), the ai_* settings (aliases, the broker's own keys) and the motion detector."""

from __future__ import annotations

import contextlib
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.analytics.results import Results
from broker.protocol import analysis
from broker.protocol import settings as camera_settings
from broker.protocol.wire import FrameHeader
from cameras.analysis.analyzer import decode
from cameras.analysis.detectors import Motion

OBJECTS: dict[str, Any] = {
    "camera": "cam",
    "seq": 7,
    "captured_at": 100.0,
    "width": 640,
    "height": 480,
    "model": "face",
    "objects": [{"label": "face", "confidence": 0.8, "box": [1, 2, 3, 4]}],
}

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
)
values = scalars | st.lists(scalars, max_size=5) | st.dictionaries(st.text(max_size=8), scalars)


@given(st.sampled_from([*OBJECTS, "type", "version", "extra"]), values)
def test_decode_raises_only_analysis_error(key: str, value: object) -> None:
    """An objects message with one field replaced by anything."""
    fields = {**OBJECTS, "version": analysis.VERSION, "type": "objects", key: value}
    with contextlib.suppress(analysis.AnalysisError):
        analysis.decode(msgpack.packb(fields))


@given(st.binary(max_size=200))
def test_decode_of_any_bytes_raises_only_analysis_error(raw: bytes) -> None:
    with contextlib.suppress(analysis.AnalysisError):
        analysis.decode(raw)


def test_decode_checks_objects() -> None:
    assert analysis.decode(analysis.encode("objects", **OBJECTS))["objects"][0]["label"] == "face"
    bad = [
        {**OBJECTS, "camera": "no spaces"},
        {**OBJECTS, "objects": [{"label": "face", "confidence": 1.5, "box": [1, 2, 3, 4]}]},
        {**OBJECTS, "objects": [{"label": "face", "confidence": 0.5, "box": [1, 2, 3]}]},
        {**OBJECTS, "objects": [dict(OBJECTS["objects"][0])] * (analysis.MAX_OBJECTS + 1)},
        {**OBJECTS, "model": "yolo"},
    ]
    for fields in bad:
        with pytest.raises(analysis.AnalysisError):
            analysis.decode(analysis.encode("objects", **fields))
    with pytest.raises(analysis.AnalysisError, match="exceeds"):
        analysis.decode(b"\x00" * (analysis.MAX_MESSAGE_BYTES + 1))


def test_results_are_bounded_rate_limited_and_counted_over_restarts() -> None:
    results = Results(history=5, events_per_second=2)
    published = [results.objects(OBJECTS, now=1000 + i * 0.1) for i in range(20)]
    # A burst of 1, then 2 a second: at 0, 0.5, 1.0 and 1.5 s.
    assert sum(p is not None for p in published) == 4
    assert len(results.since("cam", 0)) == 5  # the ring keeps the newest 5
    assert results.detections["cam", "face"] == 20
    results.status({"analysed": {"cam": 10}, "skipped": {"cam": 1}, "lag": {"cam": 0.1}})
    results.status({"analysed": {"cam": 15}, "skipped": {"cam": 1}, "lag": {"cam": 0.2}})
    results.restarted()  # a new analyzer counts from 0 again
    results.status({"analysed": {"cam": 4}, "skipped": {"cam": 0}, "lag": {"cam": 0.1}})
    assert results.analysed["cam"] == 19
    motion = {"camera": "cam", "active": True, "area": 0.2, "seq": 1, "captured_at": 5.0}
    assert results.motion(motion, 1.0) is not None
    assert results.motion(motion, 1.1) is None  # no change, no event
    assert results.stop("cam", 2.0) is not None  # analysis turned off: motion stops
    results.forget("cam")
    assert results.since("cam", 0) == [] and results.camera_stats("cam")["analysed"] == 0


def test_ai_settings_aliases_and_the_brokers_own_keys() -> None:
    clean = camera_settings.validate({"ai_model": "object_detection", "ai_confidence": 1})
    assert clean == {"ai_model": "person", "ai_confidence": 1.0}
    assert camera_settings.validate({"ai_model": "face_recognition"}) == {"ai_model": "face"}
    with pytest.raises(camera_settings.SettingsError) as bad:
        camera_settings.validate({"ai_model": "yolo", "ai_confidence": 2, "brightness": 60})
    assert set(bad.value.errors) == {"ai_model", "ai_confidence"}
    # A worker's supported map never narrows or refuses the broker's keys.
    worker = camera_settings.worker_supported()
    assert not set(worker) & set(camera_settings.BROKER_KEYS)
    assert camera_settings.validate({"ai_enabled": True}, worker) == {"ai_enabled": True}
    assert camera_settings.split({"brightness": 60, "ai_enabled": True}) == (
        {"brightness": 60},
        {"ai_enabled": True},
    )


def frame(x: int | None) -> np.ndarray:
    image = np.full((120, 160), 150, np.uint8)
    if x is not None:
        image[40:70, x : x + 30] = 20
    return image


def test_motion_starts_on_a_moving_square_and_stops_after_the_settle_time() -> None:
    motion = Motion(min_area=0.01, settle=1.0)
    changes = [motion.update(frame(None), t * 0.2) for t in range(10)]
    assert changes == [None] * 10  # a still scene
    started = [motion.update(frame(10 + 8 * i), 2.0 + i * 0.2) for i in range(5)]
    assert started[0] is not None and started[0][0] is True and started[0][1] >= 0.01
    assert started[1:] == [None] * 4
    still = [(t, motion.update(frame(None), 3.0 + t * 0.2)) for t in range(15)]
    stops = [(t, change) for t, change in still if change is not None]
    assert len(stops) == 1 and stops[0][1][0] is False
    assert 3.0 + stops[0][0] * 0.2 - 2.8 >= 1.0  # the last motion was at 2.8


def test_motion_ignores_noise_below_the_minimum_area() -> None:
    motion = Motion(min_area=0.05, settle=1.0)
    rng = np.random.default_rng(1)
    for t in range(30):
        noisy = np.clip(frame(None) + rng.normal(0, 3, (120, 160)), 0, 255).astype(np.uint8)
        assert motion.update(noisy, t * 0.2) is None


def test_jpeg_frames_decode_reduced_then_downscaled() -> None:
    image = np.zeros((720, 1280, 3), np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    header = FrameHeader("cam", 0, 0.0, 1280, 720, "jpeg")
    grey = decode(data.tobytes(), header, 640, grey=True)
    assert grey is not None and grey.shape == (360, 640)
    colour = decode(data.tobytes(), header, 500, grey=False)
    assert colour is not None and colour.shape == (281, 500, 3)
    assert decode(b"not an image", header, 640, grey=True) is None
