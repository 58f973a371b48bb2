"""The analyzer process (``camera-analyzer``): detection on the broker's frames, off the
delivery path. `analyzer` is the process, `detectors` the detectors it runs."""
