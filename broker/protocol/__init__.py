"""The wire contracts."""
