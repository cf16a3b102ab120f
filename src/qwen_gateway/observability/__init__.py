"""Metrics and structured logs: defined once, used everywhere."""
