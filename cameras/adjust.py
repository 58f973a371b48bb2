"""Image settings applied in software on a BGR frame: brightness, contrast, saturation,
sharpness and (with auto exposure off) an exposure gain.

A worker uses this for every source without hardware controls (test pattern, files,
URLs, folders, and a device whose driver refuses a control). Neutral values (50, auto
exposure on or exposure_time 100) return the very same array: no cost at all.

Cost at 1280x720 on one core of the 2-core test machine (OpenCV 5, two threads):
brightness/contrast/exposure together are one 256-entry lookup table, about 1 ms;
saturation is a blend with the grey image, about 1.2 ms; sharpness is a 5x5 Gaussian
blur plus a blend (unsharp mask, or a blend towards the blur to soften), about 2.2 ms.
All at once about 4.5 ms, next to about 2.5 ms for the JPEG encode itself.

Pure and synchronous.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

# The settings this module applies, with the value that leaves the image unchanged.
NEUTRAL: dict[str, Any] = {
    "brightness": 50,
    "contrast": 50,
    "saturation": 50,
    "sharpness": 50,
    "auto_exposure": True,
    "exposure_time": 100,  # 10 ms: gain 1 in software
}
IMAGE_SETTINGS = tuple(NEUTRAL)


def exposure_gain(settings: Mapping[str, Any]) -> float:
    """The software gain that stands for ``exposure_time``: 1 while auto exposure is on."""
    if settings.get("auto_exposure", True):
        return 1.0
    return float(settings.get("exposure_time", 100)) / 100


def is_neutral(settings: Mapping[str, Any]) -> bool:
    """Would `adjust` leave the image unchanged?"""
    return (
        all(
            settings.get(key, 50) == 50
            for key in ("brightness", "contrast", "saturation", "sharpness")
        )
        and exposure_gain(settings) == 1.0
    )


def adjust(image: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """``image`` (BGR uint8) with ``settings`` applied; the same array when they are neutral.
    Missing keys count as neutral. The input is never modified."""
    brightness = settings.get("brightness", 50)
    contrast = settings.get("contrast", 50)
    gain = exposure_gain(settings)
    if brightness != 50 or contrast != 50 or gain != 1.0:
        image = cv2.LUT(image, tone_table(brightness, contrast, gain))
    saturation = settings.get("saturation", 50)
    if saturation != 50 and image.ndim == 3:
        # A blend with the grey image: 0 is grey, 100 doubles the distance from grey.
        grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        factor = saturation / 50
        image = cv2.addWeighted(image, factor, grey, 1 - factor, 0)
    sharpness = settings.get("sharpness", 50)
    if sharpness != 50:
        blurred = cv2.GaussianBlur(image, (5, 5), 0)
        amount = (sharpness - 50) / 50  # -1 (fully blurred) .. 1
        if amount > 0:  # unsharp mask, up to twice the detail
            image = cv2.addWeighted(image, 1 + 2 * amount, blurred, -2 * amount, 0)
        else:
            image = cv2.addWeighted(image, 1 + amount, blurred, -amount, 0)
    return image


@lru_cache(maxsize=32)
def tone_table(brightness: int, contrast: int, gain: float) -> np.ndarray:
    """The lookup table for one brightness/contrast/gain: gain first (a sensor saturates),
    then contrast around mid-grey, then a brightness offset of up to ±half the range."""
    values = np.minimum(np.arange(256, dtype=np.float64) * gain, 255.0)
    # 0 → flat grey, 50 → unchanged, 100 → three times the contrast.
    factor = contrast / 50 if contrast <= 50 else 1 + (contrast - 50) / 25
    values = (values - 128) * factor + 128 + (brightness - 50) * 2.55
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    table.flags.writeable = False  # cached and shared
    return table
