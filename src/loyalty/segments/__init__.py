"""Segments: named rules over member facts, listed and counted set-based."""
