"""Trust: what lets the broker be reached from a network: TLS certificates, camera keys
(ZeroMQ CURVE) binding each message to its sender, and who may watch (docs/security.md)."""
