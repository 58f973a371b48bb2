"""Camera Broker: live frames from many cameras to many viewers.

Layers, from the pure core outwards (nothing in a lower layer imports a higher one):

- ``config``, ``queue``, ``frames``, ``hub``, ``nodata``: pure and synchronous; the hub
  maps cameras to subscribers and ``Hub.publish`` never awaits.
- ``zmqtrio``, ``ingest``: ZeroMQ under trio; frames in.
- ``http``, ``wsframes``, ``server``: one TCP port for HTTP (h11) and WebSocket
  (trio-websocket); frames out.
- ``supervisor``: the camera-worker processes the broker starts.
- ``app``: the composition root that starts everything in one nursery and owns shutdown;
  ``cli``: the ``broker`` command.
"""
