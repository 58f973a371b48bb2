"""Frames in."""
