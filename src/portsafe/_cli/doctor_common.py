"""``portsafe doctor``'s checks common to every lock system: the port ranges, your lease
keeper, ``PORTSERVER_ADDRESS``'s server, and whether the C module runs.

Plain functions, one per check, each returning a :class:`~portsafe._cli.checks.CheckResult`;
each takes the lock directory's path like the lock-file checks do, and ignores it.
"""

from __future__ import annotations

import os

from portsafe._cli.checks import CheckResult, user_text
from portsafe._cli.ranges import spans_text

__all__ = ["check_candidates", "check_ephemeral", "check_keeper", "check_port_server",
           "check_reserved", "check_speedups"]


def _ranges() -> dict[str, object]:
    from portsafe._core.ranges import describe_ranges

    return describe_ranges()


def check_ephemeral(path: str | None = None) -> CheckResult:
    """The kernel's ephemeral range is known, and leaves room for candidates.

    Example:
        >>> check_ephemeral().name
        'ranges.ephemeral'
    """
    name = "ranges.ephemeral"
    try:
        info = _ranges()
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "fix the PORTSAFE_* setting it names")
    eph = info.get("ephemeral")
    if not isinstance(eph, dict) or not eph.get("range"):
        return CheckResult(name, False, "the ephemeral range is unknown",
                           "set PORTSAFE_RANGE to ports outside it")
    low, high = eph["range"]
    return CheckResult(name, True, f"{low}-{high} (from {eph.get('source')}): the kernel "
                       "hands these out to outgoing connections, so portsafe avoids them")


def check_reserved(path: str | None = None) -> CheckResult:
    """The ports reserved from the ephemeral range (``ip_local_reserved_ports``).

    Example:
        >>> check_reserved().name
        'ranges.reserved'
    """
    name = "ranges.reserved"
    try:
        reserved = _ranges().get("reserved")
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "fix the PORTSAFE_* setting it names")
    spans = reserved.get("ranges") if isinstance(reserved, dict) else None
    source = reserved.get("source") if isinstance(reserved, dict) else None
    if not spans:
        return CheckResult(name, True, f"none (from {source or 'the OS'})")
    return CheckResult(name, True, f"{spans_text(spans)} (from {source}): never handed out by the "
                       "kernel, usable by portsafe")


def check_candidates(path: str | None = None) -> CheckResult:
    """There are enough candidate ports, from the OS's own ranges (no fallback).

    Example:
        >>> check_candidates().name
        'ranges.candidates'
    """
    name = "ranges.candidates"
    try:
        info = _ranges().get("candidates")
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "fix the PORTSAFE_* setting it names")
    if not isinstance(info, dict):
        return CheckResult(name, False, "no candidate ports", "set PORTSAFE_RANGE")
    count, fallback = info.get("count"), info.get("fallback")
    if not isinstance(count, int) or count < 100:
        return CheckResult(name, False, f"only {count} candidate ports "
                           f"({info.get('source')})",
                           "widen PORTSAFE_RANGE, or narrow the ephemeral range "
                           "(sysctl net.ipv4.ip_local_port_range)")
    if fallback:
        return CheckResult(name, False, f"{count} candidates, from a fallback: {fallback}",
                           "set PORTSAFE_RANGE to ports outside the ephemeral range")
    return CheckResult(name, True, f"{count} candidate ports ({info.get('source')})")


def check_keeper(path: str | None = None) -> CheckResult:
    """Your lease keeper's settings are valid, and no other user squats its addresses.

    Example:
        >>> check_keeper().name
        'keeper'
    """
    from portsafe import _settings
    from portsafe._services import keeper_client as kc

    name = "keeper"
    try:
        idle = _settings.keeper_idle(kc.DEFAULT_IDLE)
        addresses = kc.keeper_addresses()
    except (ValueError, OSError) as exc:
        return CheckResult(name, False, str(exc), "fix the setting or directory it names")
    squatters, mine = [], None
    for address in addresses:
        try:
            sock = kc.connect(address, 2.0)
        except kc.SquattedError as exc:
            squatters.append(f"{address} by pid {exc.pid} of {user_text(exc.uid)}")
            continue
        except OSError:
            continue
        sock.close()
        mine = mine or address
    state = f"running at {mine}" if mine else "not running (started on demand)"
    if squatters:
        return CheckResult(name, False, f"keeper {state}; held by another user: "
                           f"{'; '.join(squatters)}",
                           "portsafe skips these names, but ask that user (or an "
                           "administrator) to stop those processes")
    return CheckResult(name, True, f"keeper {state}; idles out after {idle:g} s")


def check_port_server(path: str | None = None) -> CheckResult:
    """``PORTSERVER_ADDRESS``, if set, is served by root or you (another user's server
    could hand out ports that others hold).

    Example:
        >>> check_port_server().name
        'port_server'
    """
    from portsafe import _settings
    from portsafe._services import keeper_client as kc

    name = "port_server"
    address = _settings.portserver_address()
    if not address:
        return CheckResult(name, True, "PORTSERVER_ADDRESS is not set")
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(kc.raw_address(address))
        pid, uid = kc.peer(sock)
    except OSError as exc:
        return CheckResult(name, False, f"PORTSERVER_ADDRESS={address}: nothing answers "
                           f"({exc.strerror or exc})",
                           "start the server (`portsafe serve`) or unset PORTSERVER_ADDRESS")
    finally:
        sock.close()
    me = os.getuid()
    if uid is not None and uid not in (0, me):
        return CheckResult(name, False, f"PORTSERVER_ADDRESS={address} is served by pid "
                           f"{pid} of {user_text(uid)}, not by root or you",
                           "unset PORTSERVER_ADDRESS, or use a server run by root or you")
    return CheckResult(name, True, f"PORTSERVER_ADDRESS={address} is served by pid {pid}"
                       f" of {user_text(uid) if uid is not None else 'an unknown user'}")


def check_speedups(path: str | None = None) -> CheckResult:
    """Which version of a reservation's system calls runs here (``portsafe._locking.claim``):
    the C module, or the same calls in Python, and why. Either is correct, so this is
    always ok; the detail says how to get the C module where it is missing.

    Example:
        >>> check_speedups().name
        'speedups'
    """
    import sys

    from portsafe._locking import claim as _claim

    name = "speedups"
    if _claim.IMPLEMENTATION == "c":
        return CheckResult(name, True, "the C module portsafe._locking._speedups makes each "
                           "reservation's system calls in one call")
    if _claim.PURE:
        why = "PORTSAFE_PURE_PYTHON asks for it"
    elif _claim.STALE:
        why = (f"the C module here is from another portsafe version ({_claim.STALE}); "
               f"reinstall portsafe to rebuild it")
    elif sys.platform.startswith("linux"):
        why = ("the C module was not built when portsafe was installed (no C compiler or "
               "Python headers then); install them and reinstall portsafe to get it")
    else:
        why = "the C module is built on Linux only"
    return CheckResult(name, True, f"pure Python: {why}")
