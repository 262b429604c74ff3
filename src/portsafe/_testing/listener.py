"""A listening TCP socket on a port the kernel picks: a port for a test with no race."""

from __future__ import annotations

import socket

__all__ = ["open_tcp_listener"]


def open_tcp_listener(host: str = "127.0.0.1", *, backlog: int = 128) -> socket.socket:
    """Bind and listen on a TCP socket at ``host`` on a port the kernel picks.

    Nothing is released between choosing the port and using it, so there is no race at
    all: hand the socket itself to the server under test (``asyncio.start_server(sock=)``,
    ``socketserver`` with ``bind_and_activate=False``, ``portsafe.spawn``).

    Args:
        host: A numeric IPv4 or IPv6 address; loopback by default.
        backlog: The ``listen()`` backlog.

    Returns:
        The listening socket; the caller closes it.

    Raises:
        TypeError: If ``host`` is not a str or ``backlog`` not an int.
        OSError: If the address cannot be bound (for example ``::1`` without IPv6).

    Example:
        >>> with open_tcp_listener() as sock:
        ...     sock.getsockname()[0]
        '127.0.0.1'
    """
    __tracebackhide__ = True
    if not isinstance(host, str):
        raise TypeError(f"host must be a str such as '127.0.0.1', not {host!r}")
    if not isinstance(backlog, int) or isinstance(backlog, bool):
        raise TypeError(f"backlog must be an int, not {backlog!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        if exclusive is not None:  # Windows: nobody else may bind the port while we hold it
            sock.setsockopt(socket.SOL_SOCKET, exclusive, 1)
        sock.bind((host, 0))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
