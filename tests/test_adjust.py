"""Software image settings (cameras.adjust): pure, no I/O."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cameras.adjust import NEUTRAL, adjust, is_neutral, tone_table
from cameras.sources.testpattern import TestPattern


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return TestPattern(320, 240).draw(5, 1000.0)


def sharpness_of(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def colourfulness(image: np.ndarray) -> float:
    return float(np.mean(image.max(axis=2).astype(int) - image.min(axis=2)))


@pytest.mark.parametrize(
    "neutral",
    [{}, NEUTRAL, {**NEUTRAL, "exposure_time": 5000}, {"name": "x", "fps": 30.0, "width": 64}],
    ids=["empty", "neutral", "exposure-ignored-while-auto", "other-settings"],
)
def test_neutral_settings_return_the_same_array(image: np.ndarray, neutral: dict) -> None:
    assert is_neutral(neutral)
    assert adjust(image, neutral) is image


def test_each_setting_is_not_neutral_off_its_neutral_value() -> None:
    for change in (
        {"brightness": 51},
        {"contrast": 49},
        {"saturation": 0},
        {"sharpness": 100},
        {"auto_exposure": False, "exposure_time": 200},
    ):
        assert not is_neutral({**NEUTRAL, **change}), change
    assert is_neutral({"auto_exposure": False, "exposure_time": 100})  # gain 1


def test_brightness_raises_the_mean_monotonically_and_never_modifies_the_input(
    image: np.ndarray,
) -> None:
    before = image.copy()
    means = [adjust(image, {"brightness": b}).mean() for b in (0, 25, 40, 50, 60, 75, 100)]
    assert means == sorted(means) and len(set(means)) == len(means), means
    assert means[0] < means[3] / 3 and means[-1] > 190  # ±half the range at the ends
    assert np.array_equal(image, before)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 255),
)
def test_brightness_never_lowers_a_pixel(low: int, high: int, contrast: int, value: int) -> None:
    low, high = sorted((low, high))
    pixel = np.full((2, 2, 3), value, np.uint8)
    darker = adjust(pixel, {"brightness": low, "contrast": contrast})
    brighter = adjust(pixel, {"brightness": high, "contrast": contrast})
    assert np.all(brighter >= darker)


def test_contrast_spreads_values_and_zero_is_flat_grey(image: np.ndarray) -> None:
    spreads = [adjust(image, {"contrast": c}).std() for c in (0, 25, 50, 75, 100)]
    assert spreads == sorted(spreads), spreads
    assert spreads[0] < 1


def test_saturation_zero_is_grey_and_above_fifty_is_more_colourful(image: np.ndarray) -> None:
    grey = adjust(image, {"saturation": 0})
    assert colourfulness(grey) < 1.5  # rounding only
    assert colourfulness(adjust(image, {"saturation": 100})) > 1.5 * colourfulness(image)
    assert grey.mean() == pytest.approx(image.mean(), abs=3)  # colour goes, light stays


def test_sharpness_above_fifty_sharpens_below_softens(image: np.ndarray) -> None:
    assert sharpness_of(adjust(image, {"sharpness": 100})) > 1.5 * sharpness_of(image)
    assert sharpness_of(adjust(image, {"sharpness": 0})) < 0.7 * sharpness_of(image)


def test_manual_exposure_is_a_gain_that_saturates() -> None:
    grey = np.full((4, 4, 3), 100, np.uint8)
    manual = {"auto_exposure": False}
    assert adjust(grey, {**manual, "exposure_time": 200}).mean() == 200
    assert adjust(grey, {**manual, "exposure_time": 50}).mean() == 50
    assert adjust(grey, {**manual, "exposure_time": 10000}).mean() == 255
    assert adjust(grey, {"auto_exposure": True, "exposure_time": 200}) is grey


def test_shape_and_type_are_kept_and_tables_are_shared(image: np.ndarray) -> None:
    every = {
        "brightness": 60,
        "contrast": 70,
        "saturation": 30,
        "sharpness": 80,
        "auto_exposure": False,
        "exposure_time": 150,
    }
    result = adjust(image, every)
    assert result.shape == image.shape and result.dtype == np.uint8
    assert tone_table(60, 70, 1.5) is tone_table(60, 70, 1.5)
    assert not tone_table(60, 70, 1.5).flags.writeable


def test_every_adjustment_at_720p_costs_a_few_milliseconds() -> None:
    frame = TestPattern(1280, 720).draw(0, 1000.0)
    every = {
        "brightness": 60,
        "contrast": 70,
        "saturation": 30,
        "sharpness": 80,
        "auto_exposure": False,
        "exposure_time": 150,
    }
    adjust(frame, every)
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        adjust(frame, every)
        timings.append(time.perf_counter() - started)
    # About 4.5 ms alone on this 2-core machine; generous for a loaded one.
    assert sorted(timings)[len(timings) // 2] < 0.03, timings
