"""``portsafe doctor``'s checks of the names backend (Linux): can names be bound here, and
who holds them.

On Linux a reservation is a port's abstract name, bound (``_locking.names``), so what
matters is that this process may bind such names, that the kernel refuses a second
socket the same name (the exclusion every reservation relies on), and that ``list`` and
``who`` can read who holds them. The checks bind one name only: the **probe**, port 0's
name. Nobody reserves port 0, so the probe can never take a port that someone needs;
it is bound for a moment and closed.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from portsafe._cli.checks import CheckResult, user_text
from portsafe._locking import holders, names

__all__ = ["PROBE_PORT", "check_names", "check_names_held"]

#: The port whose name the checks bind: never a reservation's.
PROBE_PORT = 0
_PROBE_TRIES = 20  # another doctor may hold the probe for a moment
_PROBE_PAUSE = 0.05

_DENIED_ADVICE = (
    "a seccomp filter or a security policy (AppArmor, SELinux) denies abstract unix "
    "sockets here, and portsafe does not fall back to lock files on Linux: allow "
    "socket(AF_UNIX, SOCK_DGRAM) and bind() to abstract names @portsafe1:* (AppArmor: "
    "`unix (create, bind) type=dgram addr=\"@portsafe1:*\",`; a container: a seccomp profile "
    "that allows them), or run the tests outside this sandbox")


def _probe() -> socket.socket | OSError | None:
    """A socket bound to the probe name; the error if binding is refused; None if
    another process keeps the probe bound through every try."""
    for _ in range(_PROBE_TRIES):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            return exc
        try:
            sock.bind(names.name(PROBE_PORT))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                return exc
            time.sleep(_PROBE_PAUSE)
            continue
        return sock
    return None


def _busy(name: str) -> CheckResult:
    holder = holders.holder_of(PROBE_PORT)
    who = holder.describe() if holder is not None else "a process portsafe cannot see"
    return CheckResult(name, False, f"the probe name {names.SHOWN_PREFIX}AAA (port 0's, "
                       f"never a reservation) stays bound by {who}",
                       "run doctor again; if it stays bound, ask who holds it to stop: "
                       "a portsafe doctor holds it for a moment only")


def check_names(path: str | None = None) -> CheckResult:
    """Abstract names can be bound here, and the kernel refuses a second socket the same
    name: what every reservation on Linux relies on.

    Example:
        >>> check_names().name
        'names.bind'
    """
    name = "names.bind"
    probe = _probe()
    if probe is None:
        return _busy(name)
    if isinstance(probe, OSError):
        return CheckResult(name, False, f"cannot bind an abstract unix name "
                           f"({names.SHOWN_PREFIX}AAA): {probe.strerror or probe}",
                           _DENIED_ADVICE)
    with probe, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
        try:
            second.bind(names.name(PROBE_PORT))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return CheckResult(name, False, f"a second bind of a bound name failed "
                                   f"with {exc.strerror or exc}, not 'Address already in "
                                   f"use'", _DENIED_ADVICE)
        else:
            return CheckResult(name, False, "a second socket could bind a name already "
                               "bound: names do not exclude each other here (a sandbox "
                               "that emulates unix sockets?), so reservations would not",
                               "run the tests where unix sockets are the kernel's own "
                               "(not under a user-space kernel such as gVisor)")
    return CheckResult(name, True, "abstract unix names bind here, and the kernel refuses "
                       "a second socket the same name (probed with port 0's name)")


def check_names_held(path: str | None = None) -> CheckResult:
    """How many ports are held by names in this network namespace, by how many processes
    and users; and that ``portsafe list`` can see them (the probe name must show up with
    this process's pid).

    Example:
        >>> check_names_held().name
        'names.held'
    """
    name = "names.held"
    probe = _probe()
    if not isinstance(probe, socket.socket):
        found, mine = holders.holders(), None
    else:
        with probe:
            inode = os.fstat(probe.fileno()).st_ino
            found = holders.holders()
        mine = next((h for h in found if h.inode == inode), None)
        if mine is None or mine.pid != os.getpid():
            return CheckResult(name, False, "the probe name, bound by this process, does "
                               "not show up with its pid: portsafe list and who cannot say "
                               "who holds what here",
                               "they read netlink sock_diag or /proc/net/unix, and "
                               "/proc/<pid>/fd: mount /proc (with no hidepid=) and allow "
                               "NETLINK_SOCK_DIAG sockets")
    held = [h for h in found if h.port != PROBE_PORT]
    pids = {h.pid for h in held if h.pid is not None}
    uids = sorted({h.uid for h in held if h.uid is not None})
    unseen = sum(h.pid is None for h in held)
    if not held:
        detail = "no port is held by a name in this network namespace"
    else:
        detail = (f"{len(held)} port{'s' * (len(held) != 1)} held by names in this network "
                  f"namespace, by {len(pids)} process{'es' * (len(pids) != 1)} portsafe "
                  f"can see")
    if unseen:
        detail += f" and {unseen} holder{'s' * (unseen != 1)} it cannot (other users')"
    if uids:
        detail += f"; users: {', '.join(user_text(uid) for uid in uids)}"
    if mine is None:
        detail += " (what portsafe reads here is unverified: the probe could not be bound)"
    elif mine.uid is None:
        detail += ("; owners unknown: netlink sock_diag is refused here, so another "
                   "user's holder shows without its uid")
    limit = _hard_limit()
    if limit is not None:
        detail += (f"; a process can hold up to about {limit} ports (each costs a "
                   f"descriptor: the hard RLIMIT_NOFILE)")
    return CheckResult(name, True, detail)


def _hard_limit() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard
