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

import errno
import os
import socket

from portsafe._errors import AddressNotAvailableError, InvalidSettingError
from portsafe._locking.claim import HELD, NO_SOCKET, REFUSED, claim_py, compile_plan
from portsafe._platform import NAMES
from portsafe._settings import shown

if NAMES:
    from portsafe._locking.names import compile_claim

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from portsafe._locking.claim import Claim, Plan

__all__ = ["Bind", "ProbeTarget", "Probes", "dual_stack_is_stricter", "ipv6_available",
           "is_free", "refusal", "targets"]

#: (family, socket type, host, rest of the sockaddr after the port)
ProbeTarget = tuple[int, int, str, tuple[int, ...]]

_IN_USE = frozenset(
    code for code in (errno.EADDRINUSE, errno.EACCES, getattr(errno, "WSAEADDRINUSE", None),
                      getattr(errno, "WSAEACCES", None)) if code is not None
)
_EXCLUSIVE = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
#: socket() errors that say nothing about the family: out of descriptors or memory
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_FAMILIES: dict[int, str] = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6",
             socket.AF_UNSPEC: "AF_UNSPEC"}
_SOCKTYPES: dict[int, tuple[int, ...]] = {
    socket.SOCK_STREAM: (socket.SOCK_STREAM,),
    socket.SOCK_DGRAM: (socket.SOCK_DGRAM,),
    0: (socket.SOCK_STREAM, socket.SOCK_DGRAM),
}
_LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}

_INTS = frozenset({int, socket.AddressFamily, socket.SocketKind})
_V6ONLY = getattr(socket, "IPV6_V6ONLY", None)

_ipv6: bool | None = None
_dual: bool | None = None
_cache: dict[tuple[str | None, int, int], Probes] = {}

#: One bind of a probe: (family, socket type, host, rest of the sockaddr, dual-stack).
Bind = tuple[int, int, str, tuple[int, ...], bool]
#: (level, option, value): one setsockopt a bind needs before it binds
Option = tuple[int, int, int]
#: A bind as :func:`is_free` runs it: (family, type, host, rest of the sockaddr, or ()
#: where it is all zeros, the options to set first)
Step = tuple[int, int, str, tuple[int, ...], tuple[Option, ...]]


class Probes(tuple[ProbeTarget, ...]):
    """What :func:`targets` returns: the (family, type, address) targets to check, and
    ``plan``, the binds that check them (fewer where one bind is provably as strict)."""

    plan: tuple[Bind, ...]
    #: the plan as :func:`is_free` runs it, every fixed part worked out once
    steps: tuple[Step, ...]
    #: (claim function, its plan of the steps), as the lock table's ``try_claim`` takes
    #: it: ``_locking.names.compile_claim`` on Linux, ``_claim.compile_plan`` elsewhere
    claim: tuple[Any, Plan]
    #: (claim function, plan) with no lock, as :func:`is_free` runs it
    #: (``_claim.compile_plan``)
    check: tuple[Claim, Plan]


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
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:  # says nothing of IPv6: ask again later
                raise _out_of_resources(exc) from None
            _ipv6 = False
    return _ipv6


def targets(host: str | None, family: int, socktype: int) -> Probes:
    """What to bind when probing, from ``reserve_port``'s host/family/socktype.

    ``host=None`` and ``"localhost"`` mean the loopback address of each family (never a
    resolver query); ``""`` means the wildcard address; other names are resolved.
    ``AF_UNSPEC`` means IPv4 and IPv6 (IPv6 only where the host has it).

    Raises:
        TypeError: host is not a str or None, family or socktype not an int.
        InvalidSettingError: an unknown family or socket type, or a malformed host name.
        AddressNotAvailableError: *host* does not resolve for *family*.

    Example:
        >>> [(host, kind) for _, kind, host, _ in targets(None, socket.AF_INET, 0)]
        [('127.0.0.1', <SocketKind.SOCK_STREAM: 1>), ('127.0.0.1', <SocketKind.SOCK_DGRAM: 2>)]
    """
    # The types are checked before the cache is asked, on every call: 2.0 == 2 and
    # False == 0 hash alike, so a cache hit alone would let them through.
    if type(family) in _INTS and type(socktype) in _INTS and (host is None
                                                              or type(host) is str):
        cached = _cache.get((host, family, socktype))
        if cached is not None:
            return cached
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str or None, not {shown(host)}")
    for name, value in (("family", family), ("socktype", socktype)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int from the socket module, not {shown(value)}")
    if family not in _FAMILIES:
        raise InvalidSettingError(f"family must be socket.AF_INET, socket.AF_INET6 or "
                                  f"socket.AF_UNSPEC (both), not {shown(family)}")
    if socktype not in _SOCKTYPES:
        raise InvalidSettingError(f"socktype must be socket.SOCK_STREAM, socket.SOCK_DGRAM "
                                  f"or 0 (both), not {shown(socktype)}")
    if family == socket.AF_UNSPEC:
        families: list[int] = [socket.AF_INET, socket.AF_INET6] if ipv6_available() \
            else [socket.AF_INET]
    else:
        families = [family]
    addresses = _addresses(host, families, family)
    made = Probes((fam, kind, address, rest) for fam, address, rest in addresses
                  for kind in _SOCKTYPES[socktype])
    dual = (family == socket.AF_UNSPEC and len(families) == 2 and host in (None, "localhost", "")
            and dual_stack_is_stricter())
    _compile(made, tuple(
        [(socket.AF_INET6, kind, "::", (), True) for kind in _SOCKTYPES[socktype]]
        if dual else [(*target, False) for target in made]))
    _cache[(host, family, socktype)] = made
    return made


def _compile(made: Probes, plan: tuple[Bind, ...]) -> Probes:
    """Set *made*'s plan and what :func:`is_free` runs for it."""
    made.plan = plan
    made.steps = _steps(plan)
    made.check = compile_plan(made.steps)
    made.claim = compile_claim(made.steps) if NAMES else made.check
    return made


def _steps(plan: tuple[Bind, ...]) -> tuple[Step, ...]:
    """*plan* as run: plain ints, no all-zero sockaddr tail (``("::1", port, 0, 0)`` and
    ``("::1", port)`` are one address), and each bind's options.

    A dual-stack bind always sets ``IPV6_V6ONLY`` to 0, even where new sockets start
    that way (Linux's ``net.ipv6.bindv6only=0``): the setting can change under a running
    process, and a socket that came out v6-only would miss every IPv4 holder."""
    exclusive: tuple[Option, ...] = () if _EXCLUSIVE is None \
        else ((socket.SOL_SOCKET, _EXCLUSIVE, 1),)
    return tuple(
        (int(family), int(kind), host, rest if any(rest) else (),
         ((socket.IPPROTO_IPV6, _V6ONLY, 0), *exclusive)
         if dual and _V6ONLY is not None else exclusive)
        for family, kind, host, rest, dual in plan)


def dual_stack_is_stricter() -> bool:
    """Whether one dual-stack ``[::]`` bind fails wherever binding 127.0.0.1 or ::1 would.

    Linux, macOS and Windows treat a dual-stack wildcard bind as overlapping every IPv4
    and IPv6 address, so it conflicts with anything bound on the port there (and with
    more: a socket on another address of the machine). That is checked once, on this
    kernel, against a plain, a SO_REUSEADDR and a listening holder of each family and
    socket type; where any check fails, the probe binds each address itself. The check
    runs the probe's own binds (:func:`is_free` on the dual-stack plan).

    Example:
        >>> isinstance(dual_stack_is_stricter(), bool)
        True
    """
    global _dual
    if _dual is None:
        _dual = _V6ONLY is not None and ipv6_available() and all(
            _dual_conflicts(family, kind, reuse)
            for family in (socket.AF_INET, socket.AF_INET6)
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) for reuse in (False, True))
    return _dual


def _dual_conflicts(family: int, kind: int, reuse: bool) -> bool:
    """Whether the dual-stack plan's bind of *kind* (run by :func:`is_free` itself, so the
    proof checks exactly what the plan does) finds a holder of *family* busy."""
    plan = _compile(Probes(), ((socket.AF_INET6, kind, "::", (), True),))
    try:
        with socket.socket(family, kind) as holder:
            if reuse:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind((_LOOPBACK[family], 0))
            if reuse and kind == socket.SOCK_STREAM:
                holder.listen()
            return is_free(holder.getsockname()[1], plan) in _IN_USE
    except OSError:
        return False


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
            errno.EADDRNOTAVAIL, f"cannot use host {shown(host)} for {_FAMILIES[family]}: "
            f"{exc.strerror}; pass an address of this machine, e.g. '127.0.0.1'") from exc
    except (UnicodeError, ValueError) as exc:  # a label over 63 characters, a surrogate
        raise InvalidSettingError(
            f"host {shown(host, 40)} is not a valid host name ({exc}); pass an address of this "
            f"machine, e.g. '127.0.0.1', or a name whose labels have at most 63 characters"
        ) from None
    found: list[tuple[int, str, tuple[int, ...]]] = []
    for fam, _, _, _, sockaddr in infos:
        if fam in families:
            entry = (int(fam), str(sockaddr[0]), tuple(int(x) for x in sockaddr[2:]))
            if entry not in found:
                found.append(entry)
    if not found:
        raise AddressNotAvailableError(errno.EADDRNOTAVAIL,
                                       f"host {shown(host)} has no {_FAMILIES[family]} address")
    return found


def is_free(port: int, probes: tuple[ProbeTarget, ...]) -> int:
    """Bind every target on *port* and close at once; 0 if all bound, else the errno.

    ``EACCES`` (a port below ``ip_unprivileged_port_start`` without the privilege to
    bind it) is returned like ``EADDRINUSE``; callers tell the two apart.

    Raises:
        AddressNotAvailableError: a target cannot be bound on any port (no IPv6, or an
            address that is not this machine's).

    Example:
        >>> with socket.socket() as held:
        ...     held.bind(("127.0.0.1", 0))
        ...     is_free(held.getsockname()[1], targets(None, socket.AF_INET, 0)) != 0
        True
    """
    if type(probes) is Probes:
        steps = probes.steps
        run, compiled = probes.check
        code = run(-1, port, compiled)
    else:
        steps = _steps(tuple((*target, False) for target in probes))
        code = claim_py(-1, port, steps)
    return refusal(code, steps) if code else 0


def refusal(code: int, steps: tuple[Step, ...]) -> int:
    """What a failed claim's *code* (``_claim``) means: the errno of "not free"
    (``EADDRINUSE``, or ``EACCES`` for a privileged port), or -1 for a lock someone
    holds; anything else raises.

    Raises:
        AddressNotAvailableError: a bind of *steps* cannot work on any port here.
        OSError: the lock call itself failed.

    Example:
        >>> refusal(REFUSED | errno.EADDRINUSE << 8, targets(None, 2, 1).steps) > 0
        True
    """
    kind, index, number = code & 15, code >> 4 & 15, code >> 8
    if kind == HELD:
        return -1
    exc = OSError(number, os.strerror(number))
    if kind == REFUSED:
        return _refused(exc, steps[index][2])
    if kind == NO_SOCKET:
        if number in _OUT_OF_RESOURCES:  # not the family's fault: nothing to remember
            raise _out_of_resources(exc)
        raise _no_family(exc, steps[index][0]) from exc
    raise exc


def _out_of_resources(exc: OSError) -> OSError:
    return OSError(exc.errno, f"cannot create a socket to check a port ({exc.strerror}): "
                   f"this process or the system is out of descriptors or memory; close "
                   f"some, or raise the limit (RLIMIT_NOFILE, ulimit -n)")


def _no_family(exc: OSError, family: int) -> AddressNotAvailableError:
    return AddressNotAvailableError(
        exc.errno, f"cannot create a {_FAMILIES.get(family, family)} socket ({exc.strerror}); "
        f"this host lacks that family: use family=socket.AF_INET")


def _refused(exc: OSError, host: str) -> int:
    """The errno of a failed probe bind if it means "not free"; else raise."""
    if exc.errno in _IN_USE:
        return exc.errno or errno.EADDRINUSE
    raise AddressNotAvailableError(
        exc.errno, f"cannot bind {shown(host)} ({exc.strerror}): it is not an address "
        f"of this machine; pass host='127.0.0.1' or another local address") from exc
