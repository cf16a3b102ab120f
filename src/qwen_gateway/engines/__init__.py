"""Engines: everything that turns a request into generated tokens."""
