"""Argument checks shared by the socket-facing public functions (listen, wait_for_port).

Each turns what the socket module would raise for bad input (``gaierror``,
``UnicodeError`` from the IDNA codec, ``OverflowError`` from a C int, a bare
``OSError``) into the documented portsafe error, with a message that says what to pass
instead. Messages show values through ``_settings.shown``, which stays short and works
for ints beyond Python's 4,300-digit ``str()`` limit (where an f-string would raise).
"""

from __future__ import annotations

import errno
import math
import socket
import sys

from portsafe._errors import AddressInUseError, AddressNotAvailableError, InvalidSettingError
from portsafe._settings import shown
from portsafe._system import read_proc

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from typing import Any

__all__ = ["bind_error", "check_backlog", "check_family", "check_timeout", "ephemeral_range",
           "in_use", "resolve"]

_C_INT_MAX = 2**31 - 1
_LINUX_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_IN_USE = frozenset({errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)})
#: What a port-0 failure advises by default: a port from outside the kernel's range.
RESERVE_INSTEAD = ("bind a port outside it instead: pass port=portsafe.reserve_port() "
                   "(a reservation, bound while it is held)")


def check_timeout(timeout: object) -> float:
    """*timeout* as finite seconds >= 0.

    Raises:
        TypeError: not an int or float (bools too).
        InvalidSettingError: negative, infinite, nan, or an int too big for a float.

    Example:
        >>> check_timeout(2)
        2.0
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {shown(timeout)}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too big for a float: no deadline could be computed
        seconds = math.inf
    if not 0 <= seconds < math.inf:  # also false for nan, which would never time out
        raise InvalidSettingError(
            f"timeout must be a finite number of seconds >= 0, not {shown(timeout)}; "
            "pass e.g. timeout=10 (0 checks once)"
        )
    return seconds


def check_family(family: object) -> socket.AddressFamily:
    """*family* as ``AF_INET`` or ``AF_INET6``.

    Raises:
        TypeError: not an int (bools too).
        InvalidSettingError: another family.

    Example:
        >>> check_family(socket.AF_INET).name
        'AF_INET'
    """
    if isinstance(family, bool) or not isinstance(family, int):
        raise TypeError(f"family must be socket.AF_INET or socket.AF_INET6, not "
                        f"{shown(family)}")
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise InvalidSettingError(f"family must be socket.AF_INET or socket.AF_INET6, not "
                                  f"{shown(family)}; listen() makes TCP sockets for IP")
    return socket.AddressFamily(family)


def check_backlog(backlog: object) -> int:
    """*backlog* for ``listen()``: None means ``SOMAXCONN``.

    Raises:
        TypeError: not an int (bools too).
        InvalidSettingError: outside 0..2**31-1 (``listen()`` takes a C int).

    Example:
        >>> check_backlog(None) == socket.SOMAXCONN
        True
    """
    if backlog is None:
        return socket.SOMAXCONN
    if isinstance(backlog, bool) or not isinstance(backlog, int):
        raise TypeError(f"backlog must be an int, not {shown(backlog)}")
    if not 0 <= backlog <= _C_INT_MAX:  # the kernel caps it at somaxconn anyway
        raise InvalidSettingError(f"backlog must be in 0..{_C_INT_MAX}, not "
                                  f"{shown(backlog)}; leave it out for SOMAXCONN")
    return backlog


def resolve(host: str | None, port: int, family: int,
            flags: int = 0) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo(host, port, family, SOCK_STREAM, 0, flags)``, with documented
    errors.

    Raises:
        InvalidSettingError: *host* has a NUL (the resolver would see only the part
            before it) or is not a valid host name (too long a label, for one).
        AddressNotAvailableError: *host* does not resolve for *family*.

    Example:
        >>> resolve("127.0.0.1", 80, socket.AF_INET)[0][4]
        ('127.0.0.1', 80)
    """
    example = "'::1'" if family == socket.AF_INET6 else "'127.0.0.1'"
    if host is not None and "\0" in host:
        raise InvalidSettingError(f"host {shown(host)} contains a NUL character; pass an "
                                  f"address such as {example}")
    try:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)
    except socket.gaierror as exc:
        family_name: dict[int, str] = {socket.AF_INET: " for AF_INET",
                                       socket.AF_INET6: " for AF_INET6"}
        raise AddressNotAvailableError(
            errno.EADDRNOTAVAIL, f"cannot use host {shown(host)}"
            f"{family_name.get(family, '')}: {exc.strerror}; pass an address such as "
            f"{example}") from exc
    except (UnicodeError, ValueError) as exc:  # too long for IDNA, for one
        raise InvalidSettingError(
            f"host {shown(host)} is not a valid host name ({exc}); pass an address such "
            f"as {example}") from exc


def in_use(exc: OSError) -> bool:
    """Whether *exc* is "Address already in use" (``EADDRINUSE``, or Windows' code).

    Example:
        >>> in_use(OSError(errno.EADDRINUSE, "Address already in use"))
        True
    """
    return exc.errno in _IN_USE or getattr(exc, "winerror", None) in _IN_USE


def ephemeral_range() -> tuple[int, int, str]:
    """(low, high, where it was read) of the range the kernel picks port 0 from, now.

    On Linux ``/proc/sys/net/ipv4/ip_local_port_range`` is read afresh (it may have
    changed since portsafe cached it); elsewhere, and where it is unreadable, what
    :func:`portsafe.ephemeral_port_range` found.

    Example:
        >>> low, high, source = ephemeral_range()
        >>> 1 <= low <= high <= 65535
        True
    """
    if sys.platform.startswith("linux"):
        try:
            low, high = (int(field) for field in (read_proc(_LINUX_RANGE) or b"").split()[:2])
        except ValueError:
            pass
        else:
            return low, high, _LINUX_RANGE
    from portsafe._core import (
        ranges as _ranges,  # the OS's own tools (sysctl, netsh): only when needed
    )

    (low, high), source = _ranges.ephemeral_with_source()
    return low, high, source


def _widen_advice(platform: str) -> str:
    if platform.startswith("linux"):
        return "widen it (sysctl -w net.ipv4.ip_local_port_range='32768 60999', the default)"
    if platform == "win32":
        return "widen it (netsh int ipv4 set dynamicport tcp start=49152 num=16384)"
    return ("widen it (sysctl net.inet.ip.portrange.first=49152 "
            "net.inet.ip.portrange.last=65535)")


def _ephemeral_full(host: str, instead: str) -> str:
    """Why a bind of *host* on port 0 found no port, and what to do."""
    low, high, source = ephemeral_range()
    count = high - low + 1
    return (
        f"no free port left for {shown(host)} in the kernel's ephemeral range {low}-{high} "
        f"({count} port{'s' if count != 1 else ''}, read from {source}): port 0 asks the "
        "kernel to pick from that range, and every port in it is in use (bound, or the "
        f"local end of a connection, TIME_WAIT ones too); {_widen_advice(sys.platform)}, "
        f"close what holds its ports (or wait for TIME_WAIT to pass), or {instead}"
    )


def bind_error(exc: OSError, host: str, port: int, *, instead: str = RESERVE_INSTEAD) -> OSError:
    """The documented error for a failed ``bind()`` of *host*:*port* (raise it from *exc*).

    ``EADDRNOTAVAIL``/``EAFNOSUPPORT``/``EINVAL``: :class:`AddressNotAvailableError`;
    ``EACCES``: a ``PermissionError`` about privileged ports; ``EADDRINUSE``: the
    ``AddressInUseError`` naming the holders; anything else: *exc* itself.

    With port 0 the kernel picks from its ephemeral range, so ``EADDRINUSE`` means that
    range is full: the error names the range, how to widen it, and *instead* (what the
    caller may do in place of port 0; never the call that just failed). Outside Linux,
    where ``EADDRNOTAVAIL`` says that too (BSD, macOS), it names both causes.

    Example:
        >>> import errno
        >>> type(bind_error(OSError(errno.EADDRNOTAVAIL, "x"), "8.8.8.8", 1)).__name__
        'AddressNotAvailableError'
        >>> print(bind_error(OSError(errno.EADDRINUSE, "x"), "127.0.0.1", 0))
        ... # doctest: +ELLIPSIS
        no free port left for '127.0.0.1' in the kernel's ephemeral range ...
    """
    not_here = (f"cannot bind {shown(host)} ({exc.strerror}): it is not an address of "
                "this machine; pass '127.0.0.1', '::1', '' (all) or another local address")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL):
        if port == 0 and exc.errno == errno.EADDRNOTAVAIL \
                and not sys.platform.startswith("linux"):
            return AddressNotAvailableError(
                exc.errno, f"{not_here}. Or else (this OS says the same for both) "
                f"{_ephemeral_full(host, instead)}")
        return AddressNotAvailableError(exc.errno, not_here)
    if exc.errno == errno.EACCES:
        return PermissionError(
            errno.EACCES, f"binding port {port} on {shown(host)} was refused "
            f"({exc.strerror}): ports below 1024 need root or CAP_NET_BIND_SERVICE; use "
            "port=0 or a portsafe.reserve_port() reservation")
    from portsafe._net.who import explain_address_in_use  # reads /proc

    if port == 0 and in_use(exc):
        return AddressInUseError(_ephemeral_full(host, instead), port=0)
    return explain_address_in_use(exc, port)
