"""Auto mode's socket patches: a bind to port 0 gets a port portsafe reserved.

Theory of operation
===================

While the patches are installed (``portsafe._auto.switch.enable()``), ``socket.socket.bind``
of an AF_INET/AF_INET6 TCP or UDP socket to port 0 reserves a port through
:func:`portsafe.reserve_port` on the caller's address, family and socket type, and
binds the caller's socket to it. An explicit port on those sockets is
``portsafe._auto.explicit``'s (a probe lease for this family, on Linux); everything else
(AF_UNIX, raw sockets, other protocols) goes straight to the C ``bind``. The rules:

1. **Held while open.** The reservation belongs to the socket. It is released when
   the socket closes (``close()``, ``with``, ``makefile`` references dropped) or is
   garbage-collected, if the socket ever listened, connected or sent (``listen``,
   ``connect``, ``connect_ex``, ``sendto``, ``sendmsg``): its port was really used.
2. **Leased after an unused close.** A socket closed without any of those is the
   bind-close-return-the-number picker; its reservation becomes a *lease*, kept for
   ``PORTSAFE_AUTO_LEASE`` seconds (default 60) so the number stays protected until
   the server that was given it binds it. ``detach()`` leases too, because the file
   descriptor lives on where auto mode cannot see it.
3. **Lazy expiry, bounded.** Leases expire when a later interception, lease or
   ``stats()`` call notices (no thread, no timer). A process keeps at most
   ``PORTSAFE_AUTO_MAX_LEASES`` (default 256); past that the oldest lease ends first,
   so a busy suite cannot exhaust the machine's range. A lease that ends hands its
   reservation to ``_autoharvest``'s small pool, for this process's next picks (at
   most 64 kept; the rest released).
4. **The kernel could have given it.** The port is checked free on the caller's
   address by a bind without ``SO_REUSEADDR``, so even a caller that set
   ``SO_REUSEADDR``/``SO_REUSEPORT`` never lands on a port that a listener, a UDP socket
   or a TIME_WAIT connection is using: exactly the ports the kernel's own ``bind(0)``
   avoids. For a pooled reservation (``_autoharvest``, the fast path) the caller's own
   bind without a reuse option is that check: on Linux ``SO_REUSEADDR`` is switched off
   for that bind and back on right after (the option is read again at ``listen()`` and
   by later binds). With ``SO_REUSEPORT``, elsewhere, and for fresh reservations,
   portsafe's probe (a socket of its own, bound without options and closed) checks
   first.
5. **Never worse than the kernel.** When no reservation can be made (range exhausted,
   lock directory unusable, EACCES, a warning turned into an error), the kernel's
   ``bind(0)`` is done instead, counted in :func:`stats` and logged once per reason
   on the ``portsafe.auto`` logger. A bind that fails does so with the kernel's own
   error (a non-local address fails as it would without portsafe).
6. **fork.** A child forgets its parent's sockets and leases: record locks are not
   inherited, so it never held them.

Garbage collection may run at any point, also inside this module, so the weakref
callback only appends to a list that later calls drain.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import sys
import threading
import time
import weakref
from collections import deque

from portsafe import _platform, _settings
from portsafe._auto import explicit as _explicit
from portsafe._auto import harvest as _autoharvest
from portsafe._core.reserve import reserve_port
from portsafe._errors import InvalidSettingError

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from portsafe._core.reservation import Reservation

__all__ = ["install", "lease_port", "release_lease", "reset_stats", "stats", "uninstall"]

_c_bind = _socket.socket.bind
_c_listen = _socket.socket.listen
_c_connect = _socket.socket.connect
_c_connect_ex = _socket.socket.connect_ex
_c_sendto = _socket.socket.sendto
_c_sendmsg = getattr(_socket.socket, "sendmsg", None)
_py_detach = socket.socket.detach
_py_real_close = socket.socket._real_close  # type: ignore[attr-defined]
_getsockopt = _socket.socket.getsockopt
_setsockopt = _socket.socket.setsockopt
_LINUX = sys.platform.startswith("linux")
_NAMES = _platform.NAMES
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""})
_SOL_SOCKET = socket.SOL_SOCKET
_REUSEADDR = socket.SO_REUSEADDR
_REUSEPORT = getattr(socket, "SO_REUSEPORT", 0)
_family = _socket.socket.family.__get__  # the raw ints: the enum properties cost more
_type = _socket.socket.type.__get__
_proto = _socket.socket.proto.__get__

_INET = frozenset({socket.AF_INET, socket.AF_INET6})
_KINDS = frozenset({socket.SOCK_STREAM, socket.SOCK_DGRAM})
_PROTOS = frozenset({0, socket.IPPROTO_TCP, socket.IPPROTO_UDP})
_TYPE_MASK = ~(getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0))
_RETRIES = 3  # a non-portsafe program may take the port between probe and bind
_MAX_REASONS = 10
_PATCHED = ("bind", "listen", "connect", "connect_ex", "sendto", "sendmsg", "detach",
            "_real_close")


class _Entry:
    """A reservation that belongs to one open socket; called back when it is collected."""

    __slots__ = ("key", "ref", "reservation", "used")

    def __init__(self, reservation: Reservation, key: int) -> None:
        self.reservation = reservation
        self.key = key
        self.used = False
        self.ref: weakref.ref[socket.socket] | None = None

    def __call__(self, ref: weakref.ref[socket.socket]) -> None:
        if self.ref is ref:  # only append: the collector may have interrupted this module
            _collected.append(self)


_entries: dict[int, _Entry] = {}  # id(socket) -> its reservation
_leases: deque[tuple[float, Reservation]] = deque()  # oldest first
_collected: list[_Entry] = []  # from weakref callbacks: handled by the next call
_mutex = threading.Lock()
_counts = {"reserved": 0, "fallbacks": 0}
_reasons: list[str] = []
_originals: dict[str, object] = {}
_monotonic = time.monotonic


def _drain() -> None:
    """Handle sockets collected since the last call, then expire old leases."""
    while _collected:
        entry = _collected.pop()
        if _entries.get(entry.key) is entry:
            del _entries[entry.key]
            _finish(entry)
    if _leases and _leases[0][0] <= _monotonic():
        with _mutex:
            now = _monotonic()
            while _leases and _leases[0][0] <= now:
                _autoharvest.recycle(_leases.popleft()[1])  # the lease ends: see there


def _finish(entry: _Entry) -> None:
    if entry.used:
        entry.reservation.release()
    else:
        _lease(entry.reservation)


_LEASE_NAMES = (_settings.AUTO_LEASE, _settings.AUTO_MAX_LEASES)
_lease_conf: list[object] = [None, _settings.LEASE_DEFAULT,
                             _settings.AUTO_MAX_LEASES_DEFAULT]


def _lease_settings() -> tuple[float, int]:
    """(lease seconds, cap), parsed again only when the raw settings change."""
    raw = _settings.fingerprint(_LEASE_NAMES)
    if raw != _lease_conf[0]:
        try:
            parsed: list[object] = [raw, _settings.auto_lease(), _settings.auto_max_leases()]
        except InvalidSettingError as exc:  # a close must not fail: the defaults, and say so
            _note_problem(exc, "auto mode uses its default lease settings")
            parsed = [raw, _settings.LEASE_DEFAULT, _settings.AUTO_MAX_LEASES_DEFAULT]
        parsed[2] = min(parsed[2], _descriptor_budget())  # type: ignore[call-overload]
        _lease_conf[:] = parsed
    return _lease_conf[1], _lease_conf[2]  # type: ignore[return-value]


def _descriptor_budget() -> int:
    """The most leases a process keeps whatever the setting (``lease_budget``)."""
    from portsafe._locking.nametable import lease_budget

    return lease_budget()


def _lease(reservation: Reservation) -> None:
    seconds, cap = _lease_settings()
    expires = _monotonic() + seconds
    with _mutex:
        _leases.append((expires, reservation))
        while len(_leases) > cap:
            _autoharvest.recycle(_leases.popleft()[1])  # the oldest lease ends


def _note_fallback(exc: BaseException) -> None:
    _counts["fallbacks"] += 1
    _note_problem(exc, "the kernel picked one instead")


def _note_problem(exc: BaseException, outcome: str) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    first = reason not in _reasons
    if first and len(_reasons) < _MAX_REASONS:
        _reasons.append(reason)
    import logging

    logging.getLogger("portsafe.auto").log(
        logging.WARNING if first else logging.DEBUG,
        "auto mode could not reserve a port as configured (%s); %s", reason, outcome)


def _reserve(**options: object) -> Reservation:
    try:
        return reserve_port(**options)  # type: ignore[arg-type]
    except Warning:
        # -W error turned a once-only warning into an exception: the second call is quiet
        return reserve_port(**options)  # type: ignore[arg-type]


def _auto_bind(sock: socket.socket, address: tuple[object, ...], family: int,
               kind: int) -> None:
    if _collected or (_leases and _leases[0][0] <= _monotonic()):
        _drain()
    host = address[0]
    if type(host) is not str:
        _c_bind(sock, address)
        return
    rest = address[2:]
    problem: BaseException | None = None
    reuse = _getsockopt(sock, _SOL_SOCKET, _REUSEADDR)
    if not ((_REUSEPORT and _getsockopt(sock, _SOL_SOCKET, _REUSEPORT))
            or (reuse and not _LINUX)):
        # Linux: SO_REUSEADDR off for the bind makes it the strict probe, atomically;
        # switched back on at once, it governs listen() and later binds as if it had
        # stayed on. (SO_REUSEPORT forms its group at bind: never toggled.)
        if reuse:
            _setsockopt(sock, _SOL_SOCKET, _REUSEADDR, 0)
        try:
            held = _autoharvest.take(_c_bind, sock, host, rest)
        except Exception:  # noqa: BLE001 - the slow path below says what went wrong
            held = None
        finally:
            if reuse:
                _setsockopt(sock, _SOL_SOCKET, _REUSEADDR, reuse)
        if held is not None:
            _track(sock, held)
            return
    for _ in range(_RETRIES):
        try:
            reservation = _reserve(host=host, family=family, socktype=kind)
        except Exception as exc:  # noqa: BLE001 - any failure means: let the kernel pick
            problem = exc
            break
        try:
            _c_bind(sock, (host, reservation.port, *rest))
        except OSError as exc:
            reservation.release()
            problem = exc
            if exc.errno == errno.EADDRINUSE:
                continue
            break
        except BaseException:
            reservation.release()
            raise
        _track(sock, reservation)
        return
    _c_bind(sock, address)  # the kernel's pick, or the kernel's own error
    if problem is not None:
        _note_fallback(problem)


def _track(sock: socket.socket, reservation: Reservation) -> None:
    key = id(sock)
    entry = _Entry(reservation, key)
    entry.ref = weakref.ref(sock, entry)
    _entries[key] = entry
    _counts["reserved"] += 1


def _bind(self: socket.socket, address: Any) -> None:
    """``socket.bind``, but port 0 on AF_INET/AF_INET6 TCP/UDP gets a reserved port, and
    an explicit port is leased to this family while the socket may be a probe."""
    if type(address) is tuple and len(address) >= 2 and type(address[1]) is int:
        family, kind = _family(self), _type(self) & _TYPE_MASK
        if family in _INET and kind in _KINDS and _proto(self) in _PROTOS:
            if address[1] == 0:
                _auto_bind(self, address, family, kind)
            elif _NAMES:
                _explicit.bind(self, address, _c_bind)
            else:
                _explicit.unnamed(self, address[1])
                _c_bind(self, address)
            return
    _c_bind(self, address)


def _mark(sock: socket.socket) -> None:
    entry = _entries.get(id(sock))
    if entry is not None:
        entry.used = True
    elif _explicit.BOUND:
        _explicit.used(sock)


def _listen(self: socket.socket, *args: int) -> None:
    _mark(self)
    _c_listen(self, *args)


def _connect(self: socket.socket, address: Any) -> None:
    _mark(self)
    _c_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _mark(self)
    code = _c_connect_ex(self, address)
    if (code == errno.ECONNREFUSED and type(address) is tuple and len(address) >= 2
            and address[0] in _LOOPBACK):
        _explicit.refused(address[1])
    return code


def _sendto(self: socket.socket, *args: object) -> int:
    _mark(self)
    return _c_sendto(self, *args)  # type: ignore[call-overload, no-any-return]


def _sendmsg(self: socket.socket, *args: object) -> int:
    _mark(self)
    return _c_sendmsg(self, *args)  # type: ignore[misc, no-any-return]


def _closed(sock: socket.socket, *, lease: bool = False) -> None:
    entry = _entries.pop(id(sock), None)
    if entry is not None:
        entry.ref = None
        if lease:
            entry.used = False
        _finish(entry)


def _real_close(self: socket.socket) -> None:
    try:
        _py_real_close(self)
    finally:
        if id(self) in _entries:
            _closed(self)
        elif _explicit.BOUND:
            _explicit.closed(self)


def _detach(self: socket.socket) -> int:
    fd = _py_detach(self)
    _closed(self, lease=True)
    return fd


def lease_port(*, host: str | None = None, family: int = socket.AF_INET,
               socktype: int = socket.SOCK_STREAM, ports: Iterable[int] | None = None,
               exclude: Iterable[int] = ()) -> int | None:
    """Reserve a port and lease it at once (the known pickers); None means fall back.

    Example:
        >>> port = lease_port()
        >>> port is None or 1 <= port <= 65535
        True
    """
    _drain()
    try:
        reservation = _reserve(host=host, family=family, socktype=socktype, ports=ports,
                               exclude=exclude)
    except Exception as exc:  # noqa: BLE001 - the picker's own code picks instead
        _note_fallback(exc)
        return None
    _counts["reserved"] += 1
    _lease(reservation)
    return reservation.port


def release_lease(port: int) -> bool:
    """Release this process's lease on *port* early; whether there was one.

    Example:
        >>> release_lease(1)
        False
    """
    with _mutex:
        for item in _leases:
            if item[1].port == port:
                _leases.remove(item)
                item[1].release()
                return True
    return False


def stats() -> dict[str, object]:
    """Counts since install, JSON-ready (see :func:`portsafe._auto.switch.stats`).

    Example:
        >>> sorted(stats())  # doctest: +NORMALIZE_WHITESPACE
        ['fallback_reasons', 'fallbacks', 'leases_held', 'probes_leased',
         'refused_by_lease', 'reserved', 'uncovered']
    """
    _drain()
    return {"reserved": _counts["reserved"], "fallbacks": _counts["fallbacks"],
            "fallback_reasons": list(_reasons), "leases_held": len(_leases),
            **_explicit.stats()}


def reset_stats() -> None:
    """Zero the counters (a fork child, or a new ``enable()`` after ``disable()``)."""
    _counts["reserved"] = _counts["fallbacks"] = 0
    _reasons.clear()
    _explicit.reset()


def _release_all() -> None:
    with _mutex:
        leases = [reservation for _, reservation in _leases]
        _leases.clear()
    held = [entry.reservation for entry in _entries.values()]
    _entries.clear()
    _collected.clear()
    for reservation in leases + held:
        reservation.release()
    _autoharvest.release_all()
    _explicit.release_all()


def _forget_in_child() -> None:
    _leases.clear()
    _entries.clear()
    _collected.clear()
    reset_stats()
    _explicit.forget_in_child()


_REPLACEMENTS: dict[str, Callable[..., object]] = {
    "bind": _bind, "listen": _listen, "connect": _connect, "connect_ex": _connect_ex,
    "sendto": _sendto, "sendmsg": _sendmsg, "detach": _detach, "_real_close": _real_close,
}
_registered = False


def install() -> None:
    """Patch ``socket.socket`` (idempotent).

    Example:
        >>> install(); uninstall()
    """
    global _registered
    if _originals:
        return
    cls = socket.socket
    for name in _PATCHED:
        if name == "sendmsg" and _c_sendmsg is None:
            continue
        _originals[name] = cls.__dict__.get(name, _MISSING)
        replacement = _REPLACEMENTS[name]
        replacement.__name__ = name
        replacement.__qualname__ = f"socket.{name}"
        setattr(cls, name, replacement)
    if not _registered:
        _registered = True
        import atexit

        atexit.register(_release_all)  # quietly: no ResourceWarning from leftover leases
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_forget_in_child)


_MISSING = object()


def uninstall() -> None:
    """Restore ``socket.socket`` and release every reservation auto mode holds.

    Example:
        >>> uninstall()
    """
    cls = socket.socket
    for name, original in _originals.items():
        if original is _MISSING:
            delattr(cls, name)
        else:
            setattr(cls, name, original)
    _originals.clear()
    _release_all()
