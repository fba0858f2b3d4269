"""Argument types and parsers shared by the kdcache commands."""

import argparse


def command_parser(commands, name: str, doc: str) -> argparse.ArgumentParser:
    """``name``'s parser, described once, by its module's ``doc``: the help is the summary
    after its ``kdcache NAME``: prefix, the description the next paragraph (else the summary)."""
    summary, *rest = [
        " ".join(part.split()).replace("``", "") for part in doc.strip().split("\n\n")
    ]
    brief = summary.split(": ", 1)[-1].rstrip(".")
    return commands.add_parser(name, help=brief, description=rest[0] if rest else brief)


def key_value(text: str, form: str = "KEY=VALUE") -> tuple[str, str]:
    """Split ``KEY=VALUE`` (both parts non-empty), or fail with the expected ``form``."""
    key, sep, value = text.partition("=")
    if not (sep and key and value):
        raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
    return key, value
