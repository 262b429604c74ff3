"""The client of a port server: ask for a grant, ask the server to let go of its lock.

The protocol is described in :mod:`portsafe._server`; :mod:`portsafe._pool` uses these
for ``PORTSERVER_ADDRESS``. Only the standard library, ``_errors`` and ``_unixserver``.
"""

from __future__ import annotations

import os
import socket
import time

from portsafe._errors import InvalidSettingError
from portsafe._unixserver import peer_credentials, unix_address

__all__ = ["request_grant", "request_handover", "request_port"]


def _exchange(address: str, line: bytes, timeout: float
              ) -> tuple[bytes, int | None, int | None] | None:
    """Send one request line; return ``(reply line, server pid, server uid)`` or None."""
    target = unix_address(address)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not timeout > 0 or timeout == float("inf"):
        raise InvalidSettingError(f"timeout must be a positive number of seconds, "
                                  f"not {timeout!r}")
    if not hasattr(socket, "AF_UNIX"):
        return None
    deadline = time.monotonic() + timeout
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            server_pid, server_uid = peer_credentials(sock)
            sock.sendall(line)
            while b"\n" not in data and len(data) < 64:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data.split(b"\n", 1)[0], server_pid, server_uid


def request_port(address: str, *, timeout: float = 2.0) -> int | None:
    """Ask the port server at *address* for a port, speaking portpicker's protocol.

    See :func:`request_grant`, which also says which process answered.

    Example:
        >>> request_port("@no-such-portserver-here", timeout=0.5) is None
        True
    """
    grant = request_grant(address, timeout=timeout)
    return None if grant is None else grant[0]


def request_grant(address: str, *, timeout: float = 2.0
                  ) -> tuple[int, int | None, int | None] | None:
    """Ask the port server at *address* for a port; return ``(port, server pid, uid)``.

    The request is made on behalf of this process (``os.getpid()``); the server holds the
    port for it until it exits. Use the port at once: the protocol has no release, so a
    caller that no longer needs it should keep it in a pool for reuse.

    A portsafe server holds each grant through the core, so the caller cannot lock the
    port until it asks for it with :func:`request_handover`.

    Args:
        address: The server's unix socket: a path, or ``@name`` for the abstract
            namespace (the format of ``PORTSERVER_ADDRESS``).
        timeout: Seconds to wait for the whole exchange.

    Returns:
        The port (1..65535) and the pid and uid of the server process (from
        ``SO_PEERCRED``; None where the OS does not say), or None if no server answers
        or it has none to give.

    Raises:
        TypeError: *address* is not a str or *timeout* not a number.
        InvalidSettingError: *address* is empty or *timeout* is not positive and finite.

    Example:
        >>> request_grant("@no-such-portserver-here", timeout=0.5) is None
        True
    """
    answer = _exchange(address, b"%d\n" % os.getpid(), timeout)
    if answer is None:
        return None
    try:
        port = int(answer[0])
    except ValueError:
        return None
    return (port, answer[1], answer[2]) if 1 <= port <= 65535 else None


def request_handover(address: str, port: int, *, timeout: float = 2.0) -> bool:
    """Ask the portsafe server at *address* to drop its lock on *port*, granted to us.

    Afterwards the caller locks the port itself, so its hold does not depend on the
    server staying alive. The port stays in the server's book (it is not handed out
    again) until this process exits.

    Args:
        address: As for :func:`request_grant`.
        port: A port the server granted to this process.
        timeout: Seconds to wait for the whole exchange.

    Returns:
        True once the server no longer holds the lock; False if it refused, does not
        know the request (portpicker's server), or did not answer.

    Example:
        >>> request_handover("@no-such-portserver-here", 20000, timeout=0.5)
        False
    """
    answer = _exchange(address, b"take %d\n" % port, timeout)
    return answer is not None and answer[0] == b"ok"
