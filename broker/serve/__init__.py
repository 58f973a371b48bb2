"""Frames and answers out."""
