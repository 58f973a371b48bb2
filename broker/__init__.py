"""Camera Broker: live frames from many cameras to many viewers.

Packages by concern, in layers; a package imports only the layers listed before it
(``tests/test_layers.py`` checks this on the sources):

- ``protocol``: the wire contracts both sides share (frame messages, control messages,
  camera settings, command results, events, the ``/ws`` binary header, the capture
  stamp). Pure: no I/O, nothing of the broker or the worker.
- ``support``: small utilities (error boundary, log throttle, rate limit, backoff,
  ZeroMQ under trio, the private work folder).
- ``trust``: TLS certificates, camera keys (ZeroMQ CURVE) and signed tokens (checking,
  issuing, keeping them out of the log); the config checks its key files, the edges use
  it.
- ``config``: the TOML configuration, validated with every problem named by key path.
- ``core``: cameras, subscribers, drop-oldest queues, the hub, "No Data": pure and
  synchronous, no trio; ``Hub.publish`` never awaits.
- ``ingest`` (frames in: ZeroMQ, HTTP uploads, sessions, the offline loop) and
  ``control`` (the control plane: the ROUTER channel, workers, commands, the state
  file, schedules, on-demand capture, the supervisor): I/O around the core; neither
  imports the other.
- ``analytics``: the frame feed and the supervised analyzer's results (events, the
  detections ring, counts); above ``control``, whose supervisor it reuses; no OpenCV
  (the analyzer itself is ``cameras.analysis``).
- ``serve``: the one port (HTTP via h11, WebSocket via trio-websocket behind the
  ``wsframes`` adapter, MJPEG, ``/ws``, metrics, the viewer page); only ``app`` imports it.
- ``app``: the composition root that starts everything in one nursery and owns
  shutdown; ``cli``, ``ctl``, ``grafana`` and ``share`` are the ``broker`` command; ``client`` is
  the client library (the protocol and the queue only).

The camera worker (package ``cameras``) imports only ``protocol`` and pure ``support``.
"""
