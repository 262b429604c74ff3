"""Unix-socket plumbing shared by the port server, its client and the lease keeper.

Addresses in ``PORTSERVER_ADDRESS`` form (a leading ``@`` is the Linux abstract
namespace), who is on the other end of a connection (``SO_PEERCRED``), a directory only
its owner can write (for path sockets), and binding a listening socket that refuses to
steal a live one. The services' request loop is ``_services/requestloop.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
import sys

from portsafe import _platform as backend
from portsafe._errors import InvalidSettingError, PortsafeError

__all__ = [
    "ServerAddressInUseError",
    "UnsafeDirectoryError",
    "bind_unix",
    "owned_directory",
    "peer_credentials",
    "unix_address",
]


class ServerAddressInUseError(PortsafeError, OSError):
    """Raised when the port server's unix socket address is already taken.

    Another server (portsafe's or portpicker's) is listening there: use it, stop it, or
    pass another ``--address``.
    """

    def __init__(self, address: str) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port server address {address!r} is already in use by another server; "
            "stop it or pass another --address (@name on Linux, else a path)",
        )


class UnsafeDirectoryError(PortsafeError, OSError):
    """Raised when the directory meant for a socket file is not safely this user's.

    Someone else could replace the socket in it: remove the directory (it is made again).
    """


def owned_directory(path: str, mode: int) -> str:
    """Make *path* a directory of this user's with *mode*, or check the one there.

    A socket file is only as safe as its directory: one that another user owns, or may
    write to, lets them put their own socket in its place.

    Args:
        path: The directory (its parent must exist).
        mode: The permission bits it is made with; an existing one may be stricter.

    Returns:
        *path*.

    Raises:
        UnsafeDirectoryError: *path* is not a directory owned by this user, or others
            may do more there than *mode* allows.

    Example:
        >>> import os, tempfile
        >>> base = tempfile.mkdtemp()
        >>> owned_directory(os.path.join(base, "mine"), 0o700) == os.path.join(base, "mine")
        True
        >>> os.rmdir(os.path.join(base, "mine")); os.rmdir(base)
    """
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # not narrowed by the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or \
            stat.S_IMODE(st.st_mode) & ~mode & 0o077:
        raise UnsafeDirectoryError(
            errno.EPERM,
            f"{path} must be a directory owned by you (uid {os.getuid()}) with mode "
            f"{mode:04o} or stricter (found {stat.filemode(st.st_mode)}, owner uid "
            f"{st.st_uid}); remove it and retry")
    return path


def unix_address(address: str) -> str:
    """Return the ``AF_UNIX`` address for *address* (``@name`` -> abstract ``\\0name``).

    Args:
        address: A filesystem path, or ``@`` and a name for the abstract namespace.

    Returns:
        The address to pass to ``bind``/``connect``.

    Raises:
        TypeError: *address* is not a str.
        InvalidSettingError: *address* is empty or ``@`` alone.

    Example:
        >>> unix_address("@unittest-portserver")
        '\\x00unittest-portserver'
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, not {address!r}")
    if address in ("", "@"):
        raise InvalidSettingError(
            f"port server address {address!r} is empty; use @name (abstract) or a path"
        )
    return "\0" + address[1:] if address.startswith("@") else address


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """Return ``(pid, uid)`` of the process at the other end of a unix socket.

    Args:
        sock: A connected ``AF_UNIX`` socket.

    Returns:
        The peer's pid (as seen from this process's pid namespace) and uid; either is
        None where the OS does not say (pid: Linux ``SO_PEERCRED`` and macOS
        ``LOCAL_PEERPID``; uid: those and ``LOCAL_PEERCRED``).

    Example:
        >>> import os, socket
        >>> a, b = socket.socketpair()
        >>> peer_credentials(a)[0] in (os.getpid(), None)
        True
        >>> a.close(); b.close()
    """
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:
        try:
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET,
                                                                 so_peercred, 12))
        except OSError:
            return None, None
        return (pid or None), uid
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS CI only
        pid_out: int | None = None
        uid_out: int | None = None
        with contextlib.suppress(OSError):
            pid_out = struct.unpack("i", sock.getsockopt(0, 0x002, 4))[0]  # LOCAL_PEERPID
        with contextlib.suppress(OSError):  # LOCAL_PEERCRED: struct xucred, uid at 4
            uid_out = struct.unpack("Ii", sock.getsockopt(0, 0x001, 8 + 4 * 17)[:8])[1]
        return pid_out, uid_out
    return None, None  # pragma: no cover


def bind_unix(address: str, *, mode: int | None = None, backlog: int = 128) -> socket.socket:
    """Bind and listen on a unix socket address; a stale path socket is replaced.

    Args:
        address: ``@name`` (abstract) or a filesystem path.
        mode: chmod the path socket to this mode (path addresses only).
        backlog: Connections the kernel queues before accept (a burst of clients that
            connect with a timeout gets EAGAIN beyond it, not a wait).

    Returns:
        The listening socket.

    Raises:
        ServerAddressInUseError: Something is already listening there.
        InvalidSettingError: *address* is abstract (``@name``) where there are none.
        OSError: Binding failed for another reason (the message says why).

    Example:
        >>> import os, tempfile
        >>> where = tempfile.mkdtemp()
        >>> sock = bind_unix(os.path.join(where, "doctest.sock"))
        >>> sock.close(); os.unlink(os.path.join(where, "doctest.sock")); os.rmdir(where)
    """
    target = unix_address(address)
    if target.startswith("\0") and not backend.ABSTRACT:
        raise InvalidSettingError(
            f"unix socket address {address!r} is in the abstract namespace (a leading @), "
            f"which only Linux has; pass a filesystem path instead")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(target)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if target.startswith("\0") or _is_alive_socket(target):
                raise ServerAddressInUseError(address) from None
            os.unlink(target)  # a stale socket file left by a server that was killed
            sock.bind(target)
        if mode is not None and not target.startswith("\0"):
            os.chmod(target, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_alive_socket(path: str) -> bool:
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return True  # not ours to delete: report it as taken
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
