"""The client of a port server: ask for a grant, ask the server to hand its hold over.

The protocol is described in :mod:`portsafe._services.portserver`;
:mod:`portsafe._core.grants` uses these
for ``PORTSERVER_ADDRESS``. Only the standard library, ``_errors``, ``_platform``
and ``_unixserver``.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import time

from portsafe import _platform as backend
from portsafe._errors import InvalidSettingError
from portsafe._unixsock import peer_credentials, unix_address

__all__ = ["request_descriptor", "request_grant", "request_handover", "request_port"]


def _exchange(address: str, line: bytes, timeout: float, *, descriptors: bool = False
              ) -> tuple[bytes, int | None, int | None, list[int]] | None:
    """Send one request line; return ``(reply line, server pid, server uid, descriptors
    received)`` or None. Without *descriptors*, none are accepted (the kernel closes
    what a server sends); with it, the caller owns (and must close) those returned."""
    target = unix_address(address)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not timeout > 0 or timeout == float("inf"):
        raise InvalidSettingError(f"timeout must be a positive number of seconds, "
                                  f"not {timeout!r}")
    if not hasattr(socket, "AF_UNIX") or (target.startswith("\0") and not backend.ABSTRACT):
        return None  # no abstract names here (macOS): nothing can answer there
    deadline = time.monotonic() + timeout
    data = b""
    fds: list[int] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            server_pid, server_uid = peer_credentials(sock)
            sock.sendall(line)
            while b"\n" not in data and len(data) < 64:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = _recv_fds(sock, fds) if descriptors else sock.recv(64)
                if not chunk:
                    break
                data += chunk
            # Closing here, after the descriptors are in this process: a server that
            # waits for it closes its own copies only now (see _server).
    except OSError:
        _close_all(fds)
        return None
    return data.split(b"\n", 1)[0], server_pid, server_uid, fds


_MAX_FDS = 4  # one is expected; room to see (and close) a few more
_INT = array.array("i").itemsize


def _recv_fds(sock: socket.socket, fds: list[int]) -> bytes:
    """``recv`` that also takes descriptors (``SCM_RIGHTS``) into *fds*, close-on-exec
    from the start (a ``fork`` and ``exec`` of another thread must not inherit them)."""
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    data, ancillary, _flags, _addr = sock.recvmsg(64, socket.CMSG_SPACE(_MAX_FDS * _INT),
                                                  flags)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[:len(payload) - len(payload) % _INT])
            for fd in got:
                if not flags:
                    os.set_inheritable(fd, False)
                fds.append(fd)
    return data


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


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
    """Ask the portsafe server at *address* to drop its lock on *port*, granted to us
    (lock files: where ``_locks.table().passes_descriptors`` is false).

    Afterwards the caller locks the port itself, so its hold does not depend on the
    server staying alive. The port stays in the server's book (it is not handed out
    again) until this process exits.

    Args:
        address: As for :func:`request_grant`.
        port: A port the server granted to this process.
        timeout: Seconds to wait for the whole exchange.

    Returns:
        True once the server no longer holds the lock; False if it refused, does not
        know the request (portpicker's server), answered otherwise (a server of names
        offers a descriptor, which this request does not take), or did not answer.

    Example:
        >>> request_handover("@no-such-portserver-here", 20000, timeout=0.5)
        False
    """
    answer = _exchange(address, b"take %d\n" % port, timeout)
    return answer is not None and answer[0] == b"ok"


def request_descriptor(address: str, port: int, *, timeout: float = 2.0
                       ) -> tuple[int, int | None, int | None] | None:
    """Ask the portsafe server at *address* for the descriptor that holds *port*'s name,
    granted to us (names: where ``_locks.table().passes_descriptors`` is true).

    The server sends it (``SCM_RIGHTS``) and closes its own copy only once this call
    has closed the connection, with the copy already in this process: the name is held
    throughout. Pass it to ``_locks.table().adopt(port, fd)`` at once.

    Args:
        address: As for :func:`request_grant`.
        port: A port the server granted to this process.
        timeout: Seconds to wait for the whole exchange.

    Returns:
        ``(descriptor, server pid, server uid)``, the descriptor now the caller's to
        adopt or close; None if the server refused, does not know the request
        (portpicker's), answered without a descriptor (a server of lock files, or an
        older portsafe, says ``ok``), or did not answer. Nothing is left open then.

    Example:
        >>> request_descriptor("@no-such-portserver-here", 20000, timeout=0.5) is None
        True
    """
    answer = _exchange(address, b"take %d\n" % port, timeout, descriptors=True)
    if answer is None:
        return None
    line, server_pid, server_uid, fds = answer
    if line != b"fd" or len(fds) != 1:
        _close_all(fds)
        return None
    return fds[0], server_pid, server_uid
