"""The ``portsafe`` command line (work in progress)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    return 0
