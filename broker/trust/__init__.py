"""Trust: what lets the broker be reached from a network: TLS certificates, camera keys
(ZeroMQ CURVE) binding each message to its sender, and signed tokens saying who may
watch or operate (docs/security.md)."""
