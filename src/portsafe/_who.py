"""Who holds a port: the OS's socket table joined with its process table.

On Linux the kernel lists every socket of the current network namespace in
``/proc/net/{tcp,tcp6,udp,udp6}`` (local address, state, inode), and each process's
open sockets appear as ``/proc/<pid>/fd/* -> socket:[<inode>]``. Joining the two names
the process behind a port. Processes we may not inspect (other users', without
privileges) still show up, with ``pid=None``. Other OSes have no such files: the answer
there is an empty list, never an exception, so callers can always ask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import socket
import struct

from portsafe._errors import InvalidSettingError, PortsafeError

TYPE_CHECKING = False  # typing is not imported at run time: importing portsafe stays cheap

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["AddressInUseError", "Holder", "explain_address_in_use", "who_holds"]

# Kernel TCP states (include/net/tcp_states.h), named as netstat/ss name them.
_TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
# A UDP socket is either connected (ESTABLISHED) or not (TCP_CLOSE, which ss calls UNCONN).
_UDP_STATES = {1: "ESTABLISHED", 7: "UNCONN"}

_TABLES = (
    ("tcp", socket.AF_INET, socket.SOCK_STREAM),
    ("tcp6", socket.AF_INET6, socket.SOCK_STREAM),
    ("udp", socket.AF_INET, socket.SOCK_DGRAM),
    ("udp6", socket.AF_INET6, socket.SOCK_DGRAM),
)
_PROC = "/proc"
_MAX_COMMAND = 120


@dataclasses.dataclass(frozen=True)
class Holder:
    """One socket bound to a port, and the process that has it open (if known).

    A socket shared by several processes (a listener inherited by a server's workers)
    appears once per process. ``pid`` and ``command`` are ``None`` when the process
    cannot be inspected (another user's, without privileges) or when no process has the
    socket open any more (``TIME_WAIT``).

    Attributes:
        pid: The process id, or ``None`` if unknown.
        command: The process's command line, arguments joined by spaces, or ``None``.
        state: The socket state as ``ss`` names it: ``"LISTEN"``, ``"ESTABLISHED"``,
            ``"TIME_WAIT"``, ... and ``"UNCONN"`` for an unconnected UDP socket.
        host: The local address (``"127.0.0.1"``, ``"::"``, ``"::ffff:127.0.0.1"``).
        port: The local port.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        socktype: ``socket.SOCK_STREAM`` or ``socket.SOCK_DGRAM``.

    Example:
        >>> import os, portsafe
        >>> with portsafe.listen() as sock:
        ...     holders = portsafe.who_holds(sock.getsockname()[1])
        >>> [(h.pid == os.getpid(), h.state) for h in holders]  # doctest: +SKIP
        [(True, 'LISTEN')]
    """

    __module__ = "portsafe"  # its public name, in reprs and tracebacks

    pid: int | None
    command: str | None
    state: str
    host: str
    port: int
    family: socket.AddressFamily
    socktype: socket.SocketKind

    def describe(self) -> str:
        """Return a short human description, e.g. ``pid 4242 (python -m http.server)``.

        Returns:
            The pid and command when known, else a note that the process is unknown.

        Example:
            >>> import socket
            >>> Holder(42, "sleep 9", "LISTEN", "127.0.0.1", 80, socket.AF_INET,
            ...        socket.SOCK_STREAM).describe()
            'pid 42 (sleep 9)'
        """
        if self.pid is None:
            if self.state == "TIME_WAIT":  # a closed connection: no process has it
                return "TIME_WAIT (no process)"
            return "a process portsafe cannot inspect (another user's?)"
        if not self.command:
            return f"pid {self.pid}"
        command = " ".join(self.command.split())
        if len(command) > _MAX_COMMAND:
            command = command[: _MAX_COMMAND - 3] + "..."
        return f"pid {self.pid} ({command})"


class AddressInUseError(PortsafeError, OSError):
    """Raised in place of a bare ``EADDRINUSE`` to say who holds the port.

    Made by :func:`explain_address_in_use`. ``errno`` is ``EADDRINUSE``, so code that
    checks ``exc.errno`` keeps working; ``port`` is the port and ``holders`` the list of
    :class:`Holder` found (possibly empty).

    Example:
        >>> import errno, portsafe
        >>> exc = portsafe.AddressInUseError("port 1 is busy", port=1)
        >>> exc.errno == errno.EADDRINUSE
        True
    """

    __module__ = "portsafe"  # its public name, in reprs and tracebacks

    def __init__(self, message: str, *, port: int, holders: Iterable[Holder] = ()) -> None:
        super().__init__(errno.EADDRINUSE, message)
        self.port = port
        self.holders = list(holders)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_address_in_use, (self.strerror, self.port, self.holders))


def _rebuild_address_in_use(message: str, port: int, holders: list[Holder]) -> AddressInUseError:
    return AddressInUseError(message, port=port, holders=holders)


# Their __module__ is "portsafe", which doctest's finder takes for "defined elsewhere".
__test__ = {"Holder": Holder, "AddressInUseError": AddressInUseError}


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {port!r}")
    if not 0 <= port <= 65535:
        raise InvalidSettingError(f"port must be in 0..65535, not {port}")
    return port


def _socktypes(socktype: object) -> tuple[int, ...]:
    if socktype == 0:
        return (socket.SOCK_STREAM, socket.SOCK_DGRAM)
    if socktype in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        return (int(socktype),)  # type: ignore[call-overload]
    raise InvalidSettingError(
        f"socktype must be socket.SOCK_STREAM, socket.SOCK_DGRAM or 0 (both), not {socktype!r}"
    )


def _decode_address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address as a number in host byte order,
    # so packing the words natively recovers the bytes in network order.
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


@dataclasses.dataclass(frozen=True)
class _Entry:
    inode: int
    state: str
    host: str
    port: int
    family: socket.AddressFamily
    socktype: socket.SocketKind


def _entries(port: int | None, socktypes: Iterable[int]) -> Iterator[_Entry]:
    """Yield the kernel's sockets bound to ``port`` (all ports when ``None``)."""
    wanted = set(socktypes)
    for name, family, socktype in _TABLES:
        if socktype not in wanted:
            continue
        try:
            with open(f"{_PROC}/net/{name}", encoding="ascii") as table:
                lines = table.read().splitlines()[1:]
        except OSError:  # no /proc (not Linux), or no IPv6 in this kernel
            continue
        states = _TCP_STATES if socktype == socket.SOCK_STREAM else _UDP_STATES
        for line in lines:
            fields = line.split()
            try:
                hex_host, hex_port = fields[1].split(":")
                local_port = int(hex_port, 16)
                if port is not None and local_port != port:
                    continue
                state_code = int(fields[3], 16)
                yield _Entry(
                    inode=int(fields[9]),
                    state=states.get(state_code, f"STATE_{state_code:02X}"),
                    host=_decode_address(hex_host),
                    port=local_port,
                    family=family,
                    socktype=socktype,
                )
            except (IndexError, ValueError):  # a format we do not know: skip, never crash
                continue


def _listening(port: int, host: str | None = None) -> bool:
    """Whether the kernel lists a TCP listener on ``port`` that ``host`` would reach."""
    for entry in _entries(port, (socket.SOCK_STREAM,)):
        if entry.state != "LISTEN":
            continue
        if host is None or entry.host in (host, f"::ffff:{host}"):
            return True
        # A wildcard listener serves every address of its family; "::" usually serves
        # IPv4 too (IPV6_V6ONLY is off by default, and /proc does not show it).
        if entry.host == "::" or (entry.host == "0.0.0.0" and ":" not in host):
            return True
    return False


def _pids_by_inode(inodes: set[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    try:
        pids = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return found
    for pid in sorted(pids):
        fd_dir = f"{_PROC}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # another user's process, or it just exited
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes and pid not in found.setdefault(inode, []):
                    found[inode].append(pid)
    return found


def _command(pid: int) -> str | None:
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if args:
        return " ".join(args)
    with contextlib.suppress(OSError), open(f"{_PROC}/{pid}/comm", "rb") as f:
        return "[" + f.read().decode(errors="replace").strip() + "]"
    return None


def who_holds(port: int, *, socktype: int = socket.SOCK_STREAM) -> list[Holder]:
    """Return the sockets bound to ``port`` on this machine and the processes holding them.

    Reads the kernel's tables (Linux: ``/proc/net`` and ``/proc/<pid>/fd``); it sees the
    current network namespace only. Listeners come first, then other states; within a
    state, by pid. Where the OS offers no such tables the answer is empty.

    Args:
        port: The local port to look up (1..65535).
        socktype: ``socket.SOCK_STREAM`` (TCP, the default), ``socket.SOCK_DGRAM`` (UDP)
            or ``0`` for both.

    Returns:
        A list of :class:`Holder`, one per (socket, process) pair; ``pid=None`` where the
        process could not be inspected or no process has the socket any more.

    Raises:
        TypeError: ``port`` is not an int.
        portsafe.InvalidSettingError: ``port`` is out of range or ``socktype`` unknown.

    Example:
        >>> import os, portsafe
        >>> with portsafe.listen() as sock:
        ...     port = sock.getsockname()[1]
        ...     mine = [h for h in portsafe.who_holds(port) if h.pid == os.getpid()]
        >>> [h.state for h in mine]  # doctest: +SKIP
        ['LISTEN']
    """
    port = _check_port(port)
    entries = list(_entries(port, _socktypes(socktype)))
    inodes = {e.inode for e in entries if e.inode}
    pids = _pids_by_inode(inodes) if inodes else {}
    commands: dict[int, str | None] = {}
    holders: list[Holder] = []
    for entry in entries:
        entry_pids: list[int | None] = list(pids.get(entry.inode, ())) or [None]
        for pid in entry_pids:
            if pid is not None and pid not in commands:
                commands[pid] = _command(pid)
            holders.append(
                Holder(
                    pid=pid,
                    command=None if pid is None else commands[pid],
                    state=entry.state,
                    host=entry.host,
                    port=entry.port,
                    family=entry.family,
                    socktype=entry.socktype,
                )
            )
    holders.sort(key=lambda h: (h.state != "LISTEN", h.pid is None, h.pid or 0))
    return holders


def _is_address_in_use(exc: OSError) -> bool:
    codes = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}
    return exc.errno in codes or getattr(exc, "winerror", None) in codes


def explain_address_in_use(
    exc: OSError, port: int, *, socktype: int = socket.SOCK_STREAM
) -> OSError:
    """Turn an "Address already in use" error into one that names who holds the port.

    Args:
        exc: The error raised by ``bind()``.
        port: The port that could not be bound.
        socktype: ``socket.SOCK_STREAM``, ``socket.SOCK_DGRAM`` or ``0`` (both), as for
            :func:`who_holds`.

    Returns:
        An :class:`AddressInUseError` (``errno`` ``EADDRINUSE``) whose message names the
        holders and what to do, if ``exc`` is an ``EADDRINUSE`` error; otherwise ``exc``
        itself, unchanged. Raise the result ``from exc``.

    Raises:
        TypeError: ``exc`` is not an ``OSError`` or ``port`` not an int.

    Example:
        >>> import socket, portsafe
        >>> with portsafe.listen() as held, socket.socket() as sock:
        ...     port = held.getsockname()[1]
        ...     try:
        ...         sock.bind(("127.0.0.1", port))
        ...     except OSError as exc:
        ...         print(portsafe.explain_address_in_use(exc, port))  # doctest: +ELLIPSIS
        port ... is held by pid ...
    """
    if not isinstance(exc, OSError):
        raise TypeError(f"exc must be an OSError, not {exc!r}")
    port = _check_port(port)
    if not _is_address_in_use(exc):
        return exc
    holders = who_holds(port, socktype=socktype)
    return AddressInUseError(_explain(port, holders), port=port, holders=holders)


def _explain(port: int, holders: list[Holder]) -> str:
    advice = (
        "pick another port (portsafe.reserve_port() hands out one nobody else gets, "
        "portsafe.listen() binds one and keeps it)"
    )
    live = [h for h in holders if h.state != "TIME_WAIT"]
    known = [h for h in live if h.pid is not None]
    if known:
        listeners = [h for h in known if h.state in ("LISTEN", "UNCONN")] or known
        pids: list[int] = []
        parts: list[str] = []
        for holder in listeners:
            if holder.pid not in pids and holder.pid is not None:
                pids.append(holder.pid)
                parts.append(f"{holder.describe()} on {_address(holder)}")
        kill = " ".join(str(p) for p in pids)
        return f"port {port} is held by {', '.join(parts)}; {advice}, or stop it (kill {kill})"
    if live:
        return (
            f"port {port} is held by a process portsafe cannot inspect ({live[0].state} on "
            f"{_address(live[0])}; another user's, or run as root to see it); {advice}"
        )
    if holders:
        return (
            f"port {port} has only connections in TIME_WAIT, held by no process: set "
            f"SO_REUSEADDR on the server socket or wait for them to expire; or {advice}"
        )
    return (
        f"port {port} is in use, but the OS did not say by whom (another network namespace "
        f"or an OS without /proc); {advice}"
    )


def _address(holder: Holder) -> str:
    if holder.family == socket.AF_INET6:
        return f"[{holder.host}]:{holder.port}"
    return f"{holder.host}:{holder.port}"
