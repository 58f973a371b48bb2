"""Camera workers: capture, encode and publish frames to the broker over ZeroMQ.

`broker.protocol.wire` and `broker.protocol.stamp` are pure and light (no OpenCV import): the broker
imports them too. Everything that touches a device lives in `cameras.sources`.
"""
