"""Is a port free for what the caller will bind? Checked by binding it, briefly.

A probe binds each requested (family, socket type, address) without ``SO_REUSEADDR``
(the strictest server there is) and closes the socket at once. An unlistened, closed
socket leaves no TIME_WAIT behind, so the probe never gets in the way of the real bind.
Free therefore means: "a server that binds exactly this address, with or without
SO_REUSEADDR, would have succeeded at hand-out". On Linux a bind to 127.0.0.1 also
fails when another socket holds the wildcard address on that port, so wildcard servers
are seen too.
"""

from __future__ import annotations

import _socket
import errno
import socket

from portsafe._errors import AddressNotAvailableError, InvalidSettingError

__all__ = ["ProbeTarget", "ipv6_available", "is_free", "targets"]

#: (family, socket type, host, rest of the sockaddr after the port)
ProbeTarget = tuple[int, int, str, tuple[int, ...]]

_IN_USE = frozenset(
    code for code in (errno.EADDRINUSE, errno.EACCES, getattr(errno, "WSAEADDRINUSE", None),
                      getattr(errno, "WSAEACCES", None)) if code is not None
)
_EXCLUSIVE = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
_FAMILIES: dict[int, str] = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6",
             socket.AF_UNSPEC: "AF_UNSPEC"}
_SOCKTYPES: dict[int, tuple[int, ...]] = {
    socket.SOCK_STREAM: (socket.SOCK_STREAM,),
    socket.SOCK_DGRAM: (socket.SOCK_DGRAM,),
    0: (socket.SOCK_STREAM, socket.SOCK_DGRAM),
}
_LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}

_ipv6: bool | None = None
_cache: dict[tuple[str | None, int, int], tuple[ProbeTarget, ...]] = {}


def ipv6_available() -> bool:
    """Whether this host can bind ``::1`` (false in Docker's default network, for one).

    Example:
        >>> isinstance(ipv6_available(), bool)
        True
    """
    global _ipv6
    if _ipv6 is None:
        if not socket.has_ipv6:  # Python built without IPv6
            _ipv6 = False
            return _ipv6
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                sock.bind(("::1", 0))
            _ipv6 = True
        except OSError:
            _ipv6 = False
    return _ipv6


def targets(host: str | None, family: int, socktype: int) -> tuple[ProbeTarget, ...]:
    """What to bind when probing, from ``reserve_port``'s host/family/socktype.

    ``host=None`` and ``"localhost"`` mean the loopback address of each family (never a
    resolver query); ``""`` means the wildcard address; other names are resolved.
    ``AF_UNSPEC`` means IPv4 and IPv6 (IPv6 only where the host has it).

    Raises:
        TypeError: host is not a str or None, family or socktype not an int.
        InvalidSettingError: an unknown family or socket type.
        AddressNotAvailableError: *host* does not resolve for *family*.
    """
    key = (host, family, socktype)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str or None, not {host!r}")
    for name, value in (("family", family), ("socktype", socktype)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int from the socket module, not {value!r}")
    if family not in _FAMILIES:
        raise InvalidSettingError(f"family must be socket.AF_INET, socket.AF_INET6 or "
                                  f"socket.AF_UNSPEC (both), not {family!r}")
    if socktype not in _SOCKTYPES:
        raise InvalidSettingError(f"socktype must be socket.SOCK_STREAM, socket.SOCK_DGRAM "
                                  f"or 0 (both), not {socktype!r}")
    if family == socket.AF_UNSPEC:
        families: list[int] = [socket.AF_INET, socket.AF_INET6] if ipv6_available() \
            else [socket.AF_INET]
    else:
        families = [family]
    addresses = _addresses(host, families, family)
    made = tuple((fam, kind, address, rest) for fam, address, rest in addresses
                 for kind in _SOCKTYPES[socktype])
    _cache[key] = made
    return made


def _addresses(host: str | None, families: list[int],
               family: int) -> list[tuple[int, str, tuple[int, ...]]]:
    if host is None or host == "localhost":
        return [(fam, _LOOPBACK[fam], (0, 0) if fam == socket.AF_INET6 else ())
                for fam in families]
    if host == "":
        return [(fam, _WILDCARD[fam], (0, 0) if fam == socket.AF_INET6 else ())
                for fam in families]
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressNotAvailableError(
            errno.EADDRNOTAVAIL, f"cannot use host {host!r} for {_FAMILIES[family]}: "
            f"{exc.strerror}; pass an address of this machine, e.g. '127.0.0.1'") from exc
    found: list[tuple[int, str, tuple[int, ...]]] = []
    for fam, _, _, _, sockaddr in infos:
        if fam in families:
            entry = (int(fam), str(sockaddr[0]), tuple(int(x) for x in sockaddr[2:]))
            if entry not in found:
                found.append(entry)
    if not found:
        raise AddressNotAvailableError(errno.EADDRNOTAVAIL,
                                       f"host {host!r} has no {_FAMILIES[family]} address")
    return found


def is_free(port: int, probes: tuple[ProbeTarget, ...]) -> int:
    """Bind every target on *port* and close at once; 0 if all bound, else the errno.

    Raises:
        AddressNotAvailableError: a target cannot be bound on any port (no IPv6, or an
            address that is not this machine's).
    """
    for family, kind, host, rest in probes:
        try:
            sock = _socket.socket(family, kind)
        except OSError as exc:
            raise AddressNotAvailableError(
                exc.errno, f"cannot create a {_FAMILIES[family]} socket ({exc.strerror}); "
                f"this host lacks that family: use family=socket.AF_INET") from exc
        try:
            if _EXCLUSIVE is not None:
                sock.setsockopt(socket.SOL_SOCKET, _EXCLUSIVE, 1)
            sock.bind((host, port, *rest))
        except OSError as exc:
            if exc.errno in _IN_USE:
                return exc.errno or errno.EADDRINUSE
            raise AddressNotAvailableError(
                exc.errno, f"cannot bind {host!r} ({exc.strerror}): it is not an address "
                f"of this machine; pass host='127.0.0.1' or another local address") from exc
        finally:
            sock.close()
    return 0
