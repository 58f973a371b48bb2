"""Camera workers: capture, encode and publish frames to the broker over ZeroMQ.

`cameras.wire` and `cameras.stamp` are pure and light (no OpenCV import): the broker
imports them too. Everything that touches a device lives in `cameras.sources`.
"""
