"""The command line's exit codes, and how it tells an error.

Every verb's module reports through these, so one failure reads the same from any verb:
``portsafe: error: MESSAGE`` on stderr and an exit code from ``portsafe --help``.
"""

from __future__ import annotations

import sys

__all__ = ["EXIT_CANNOT_EXECUTE", "EXIT_COMMAND_NOT_FOUND", "EXIT_ERROR", "EXIT_NOT_FOUND",
           "EXIT_NO_FREE_PORT", "EXIT_OK", "EXIT_USAGE", "UsageError", "error",
           "no_free_port_message", "plural"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_FREE_PORT = 3
EXIT_ERROR = 4
EXIT_CANNOT_EXECUTE = 126
EXIT_COMMAND_NOT_FOUND = 127


class UsageError(Exception):
    """A bad command line: exit 2 with this message."""


def error(message: str) -> None:
    """Print ``portsafe: error: MESSAGE`` on stderr.

    Example:
        >>> error("x")  # doctest: +SKIP
    """
    print(f"portsafe: error: {message}", file=sys.stderr)


def plural(count: int, noun: str) -> str:
    """``1 port``, ``2 ports``.

    Example:
        >>> plural(1, "port"), plural(3, "port")
        ('1 port', '3 ports')
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


def no_free_port_message(message: str, n: int, candidates: object) -> str:
    """The core's NoFreePortError message, told in the command line's terms.

    Example:
        >>> no_free_port_message("...", 100000, 36094)  # doctest: +ELLIPSIS
        'cannot reserve 100000 ports: there are only 36094 candidate ports; ...'
    """
    if isinstance(candidates, int) and 0 < candidates < n:
        return (f"cannot reserve {plural(n, 'port')}: there are only "
                f"{plural(candidates, 'candidate port')}; ask for fewer with -n, or pick "
                "from a wider range with --range LO-HI (or PORTSAFE_RANGE)")
    import re

    # The core speaks Python (ports=...); this is the command line (--range LO-HI).
    message = message.replace("(ports=..., PORTSAFE_RANGE)", "(--range LO-HI, or "
                              "PORTSAFE_RANGE)").replace("(ports=", "(--range ")
    message = re.sub(r"\bno 1 (contiguous )?free ports\b", "no free port", message)
    return re.sub(r"\b1 (candidate port|port)s\b", r"1 \1", message)
