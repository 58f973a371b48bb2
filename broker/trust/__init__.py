"""Who may speak for a camera and who may watch: camera keys (ZeroMQ CURVE), and the
checks that bind each message to its sender's key (docs/security.md)."""
