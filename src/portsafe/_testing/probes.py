"""What this host can do for a test: bind IPv6 loopback, bind ``AF_UNIX`` sockets.

Each answer is probed on first use and kept: it does not change during a test run, and
probing at import time would cost every test process that merely imports portsafe.
The skip decorators and the pytest markers ask here, so both skip for the same reasons.
"""

from __future__ import annotations

import os
import socket
import tempfile

__all__ = [
    "IPV6_SKIP_REASON",
    "UNIX_SKIP_REASON",
    "ipv6_available",
    "unix_sockets_available",
]

IPV6_SKIP_REASON = "IPv6 is not available on this host (binding ::1 failed)"
UNIX_SKIP_REASON = "AF_UNIX sockets are not available or cannot be bound here"

_ipv6_cache: bool | None = None
_unix_cache: bool | None = None


def ipv6_available() -> bool:
    """Whether this host can bind TCP on IPv6 loopback (``::1``); probed once, then cached.

    Docker's default network has no IPv6, so tests that need it should skip, not fail.

    Returns:
        ``True`` if a TCP socket could be bound to ``[::1]:0``.

    Example:
        >>> isinstance(ipv6_available(), bool)
        True
    """
    global _ipv6_cache
    if _ipv6_cache is None:
        _ipv6_cache = _probe_ipv6()
    return _ipv6_cache


def _probe_ipv6() -> bool:
    from portsafe._core.probe import ipv6_available as core_answer  # one probe for portsafe

    return core_answer()


def unix_sockets_available() -> bool:
    """Whether ``AF_UNIX`` sockets exist and can be bound here; probed once, then cached.

    Some sandboxes (and old Windows builds) have ``socket.AF_UNIX`` but refuse ``bind``
    with ``PermissionError``; CPython's ``skip_unless_bind_unix_socket`` makes the same check.

    Returns:
        ``True`` if a unix stream socket could be bound in a fresh temporary directory.

    Example:
        >>> isinstance(unix_sockets_available(), bool)
        True
    """
    global _unix_cache
    if _unix_cache is None:
        _unix_cache = _probe_unix()
    return _unix_cache


def _probe_unix() -> bool:
    family = getattr(socket, "AF_UNIX", None)
    if family is None:
        return False
    with tempfile.TemporaryDirectory(prefix="portsafe-") as directory:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return False
        with sock:
            try:
                sock.bind(os.path.join(directory, "probe.sock"))
            except OSError:
                return False
    return True
