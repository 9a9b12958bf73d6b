"""Helpers shared by tests: a real server on 127.0.0.1 and test images."""
