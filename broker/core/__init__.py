"""The pure core of fan-out."""
