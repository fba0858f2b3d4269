"""Argument types shared by the kdcache commands."""

import argparse


def key_value(text: str, form: str = "KEY=VALUE") -> tuple[str, str]:
    """Split ``KEY=VALUE`` (both parts non-empty), or fail with the expected ``form``."""
    key, sep, value = text.partition("=")
    if not (sep and key and value):
        raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
    return key, value
