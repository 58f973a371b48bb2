"""Trust: signed tokens, TLS certificates and camera keys, and the checks built on them."""
