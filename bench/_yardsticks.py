"""The yardsticks every figure is measured against, in the same run.

``find_unused_port`` is CPython's ``test.support.socket_helper.find_unused_port`` (with
``bind_port``, which it calls), copied so that the bench does not depend on the
``test`` package, which many Python builds leave out.
"""

from __future__ import annotations

import socket


def bind_port(sock: socket.socket, host: str = "localhost") -> int:
    """CPython's ``socket_helper.bind_port``."""
    if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
        if hasattr(socket, "SO_REUSEADDR") and sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1:
            raise RuntimeError("tests should never set the SO_REUSEADDR socket option on "
                               "TCP/IP sockets!")
        if hasattr(socket, "SO_REUSEPORT"):
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1:
                    raise RuntimeError("tests should never set the SO_REUSEPORT socket "
                                       "option on TCP/IP sockets!")
            except OSError:
                pass  # SO_REUSEPORT defined but not supported
        if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    sock.bind((host, 0))
    return sock.getsockname()[1]


def find_unused_port(family: int = socket.AF_INET,
                     socktype: int = socket.SOCK_STREAM) -> int:
    """CPython's ``socket_helper.find_unused_port``."""
    with socket.socket(family, socktype) as tempsock:
        port = bind_port(tempsock)
    del tempsock
    return port


def plain_binds(count: int = 100) -> None:
    """``count`` plain ``socket()+bind(0)+close()``: the kernel's own cost of a port."""
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.close()
