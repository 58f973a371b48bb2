"""Scenario ``mjpeg``: the ``fanout`` measurement over HTTP MJPEG (``/cameras/{id}/mjpeg``).

C cameras x S clients per camera, each reading the ``multipart/x-mixed-replace`` stream:
the client reads each part's ``Content-Length``, keeps the stamp from the image's ``COM``
segment and skips the rest. Same fields, chart and targets as ``fanout``.
"""

from __future__ import annotations

import argparse

from benchmarks import fanout

add_arguments = fanout.add_arguments
headline = fanout.headline


def run(args: argparse.Namespace) -> int:
    return fanout.run_fanout(args, "mjpeg", "mjpeg")
