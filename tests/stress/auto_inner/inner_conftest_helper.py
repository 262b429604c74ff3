"""The inner suite's bind-close helper, as countless conftests have it (loaded with -p)."""

from __future__ import annotations

import socket

import pytest


def find_free_port() -> int:
    """Bind port 0, read the number, close: the race auto mode removes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def unused_port() -> int:
    """A port picked by bind-and-close."""
    return find_free_port()
