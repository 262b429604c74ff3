"""Starting the lease keeper: claim its address, then exec it detached.

The client binds and listens on the keeper's free address itself, so binding is the
lock among clients starting at once, and hands the listening socket to a keeper it
starts with a double fork and ``exec`` (no ``subprocess``: the caller's CPU stays
that of one call). The keeper reports ``ok`` (or why not) on a status pipe.

The fork happens in the caller's process: the command line is single-threaded; a
multi-threaded library caller only runs ``os`` calls between fork and exec.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys

from portsafe._errors import KeeperError

__all__ = ["BACKLOG", "start"]

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn


def start(address: str, timeout: float) -> bool:
    """Claim *address* and start a keeper on it; False if someone else claimed it first.

    Args:
        address: A free keeper address (nobody listens there).
        timeout: Seconds to wait for the keeper to report ready.

    Returns:
        True once a keeper serves *address*; False if another client bound it first
        (its keeper will answer there).

    Raises:
        KeeperError: The keeper could not be started (the message says why).

    Example:
        >>> start("@portsafe-doctest-never-started", 1.0)  # doctest: +SKIP
        True
    """
    if not hasattr(os, "fork"):  # pragma: no cover - Windows
        raise KeeperError(errno.ENOSYS, "no lease keeper on this OS")
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        if not _bind(listener, address):
            return False
        listener.listen(BACKLOG)
        _spawn(listener.fileno(), timeout)
    finally:
        listener.close()  # the keeper has its own copy
    return True


def _bind(listener: _socket.socket, address: str) -> bool:
    raw = "\0" + address[1:] if address.startswith("@") else address  # abstract name
    try:
        listener.bind(raw)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise KeeperError(exc.errno, f"cannot listen on {address}: {exc}") from None
        if address.startswith("@"):
            return False  # another client is starting a keeper there
        return _replace_stale(listener, raw)
    if not address.startswith("@"):
        os.chmod(raw, 0o600)
    return True


def _replace_stale(listener: _socket.socket, path: str) -> bool:
    """A path socket left by a killed keeper: replace it, one client at a time."""
    import fcntl

    guard = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return False  # alive: use it
        except OSError:
            pass
        finally:
            probe.close()
        try:
            os.unlink(path)
            listener.bind(path)
        except OSError:
            return False
        os.chmod(path, 0o600)
        return True
    finally:
        os.close(guard)


def _spawn(listen_fd: int, timeout: float) -> None:
    """Start ``python -m portsafe._services.keeper`` detached, serving *listen_fd*; wait until it
    reports ready (or why it could not start)."""
    # The keeper runs in "/" (it must not pin the caller's directory), so a relative
    # sys.path entry would not find this very portsafe: name its directory explicitly.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    status_r, status_w = os.pipe()
    argv = [sys.executable, "-m", "portsafe._services.keeper", "--fd", str(listen_fd),
            "--status-fd", str(status_w)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which execs or _exits
        try:
            os.close(status_r)
            if os.fork() != 0:  # the keeper is reparented, never the caller's zombie
                os._exit(0)
            os.setsid()  # no terminal, no process group of the caller's
            os.chdir("/")
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            keep = sorted({listen_fd, status_w})
            # Close every other descriptor: an inherited pipe held open by a daemon
            # would keep `$(...)` or a test harness waiting for EOF.
            low = 3
            for fd in keep:
                os.closerange(low, fd)
                os.set_inheritable(fd, True)
                low = fd + 1
            os.closerange(low, 1 << 16)
            os.execve(sys.executable, argv, env)  # noqa: S606 - no shell wanted
        except BaseException as exc:  # noqa: BLE001 - report, then leave at once
            try:
                os.write(status_w, f"cannot start the lease keeper: {exc}".encode())
            finally:
                os._exit(127)
    os.close(status_w)
    try:
        os.waitpid(pid, 0)  # the intermediate child, gone at once
        message = _read_status(status_r, timeout)
    finally:
        os.close(status_r)
    if message != b"ok":
        text = message.decode(errors="replace") or "the lease keeper died while starting"
        raise KeeperError(errno.ECHILD, text)


def _read_status(fd: int, timeout: float) -> bytes:
    import select

    data = b""
    while True:
        ready, _w, _x = select.select([fd], [], [], max(timeout, 0.1))
        if not ready:
            return data or b"the lease keeper did not report ready in time"
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk
