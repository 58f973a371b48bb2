"""Trust: what lets the broker be reached from a network (certificates, keys, tokens)."""
