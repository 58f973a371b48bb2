"""The "No Data" source: while a camera is offline its viewers get a generated image
each second in place of its frames.

`watch` runs the core's `Watcher` once a second (the composition root starts it under
``faults.keep_running("offline", ...)``); `no_data_image` renders the image off the
event loop, for the watcher and for the HTTP answers (a snapshot of an offline camera).
"""

from __future__ import annotations

import time

import trio

from broker.core import nodata
from broker.core.camera import Camera
from broker.core.watcher import Watcher
from broker.support.faults import Faults

PLACEHOLDER_INTERVAL = 1.0  # seconds between "No Data" images for an offline camera


async def watch(watcher: Watcher, faults: Faults, interval: float = PLACEHOLDER_INTERVAL) -> None:
    """Each ``interval``: what `Watcher.due` says, then a "No Data" image to the viewers
    of each offline camera. A camera whose image cannot be made costs its own image, not
    the others'."""
    while True:
        now = time.monotonic()
        for camera in watcher.due(now):
            with faults.contain("offline", "the No Data image"):
                image = await no_data_image(camera, now)
                watcher.show_no_data(camera, image)
        await trio.sleep(interval)


async def no_data_image(
    camera: Camera, now: float, placeholders: nodata.Placeholders | None = None
) -> nodata.Placeholder:
    """The "No Data" image of ``camera`` (silent at ``now``): cached (in
    `nodata.PLACEHOLDERS` unless told), else rendered in a worker thread (rendering
    takes tens of ms)."""
    placeholders = placeholders if placeholders is not None else nodata.PLACEHOLDERS
    name, (width, height), silent_for = camera.info.name, camera.size, camera.silent_for(now)
    format = camera.format
    cached = placeholders.cached(name, width, height, silent_for, format)
    if cached is not None:
        return cached
    return await trio.to_thread.run_sync(
        placeholders.render, name, width, height, silent_for, format
    )
