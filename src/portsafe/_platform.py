"""Which lock system this process uses: names on Linux, lock files elsewhere.

One network namespace must have one lock system: a process holding port P by a name and
another holding P by a lock file would not see each other. So on Linux portsafe always
uses names (``_locking.names``), and nothing a user can set chooses files there:
``PORTSAFE_LOCK_DIR`` has no effect (``_locking.files`` warns once that it is ignored). If names
cannot be bound (a seccomp filter, an AppArmor profile), reservations raise an error
that says so; they do not fall back to files.

macOS, the BSDs and Windows use the lock directory (``_locking.lockdir``,
``_locking.files``).

Portsafe's own test suite runs that file backend on Linux too, through a channel that is
not a setting: :data:`SELFTEST` set to ``1``, accepted only in a network namespace with
no interface but loopback (``unshare --net``: a private one, where nothing else can
collide with the ports of the test). Through it a Linux process runs the code macOS and
the BSDs run: the lock files with classic record locks, the Python version of the claim,
path-based unix sockets for the keeper and the port server (:data:`ABSTRACT`), and no
``/proc`` (:data:`PROC`). What only a real macOS or Windows run can prove is listed in
``docs/design.md``.
"""

from __future__ import annotations

import os
import socket
import sys

from portsafe._errors import InvalidSettingError

__all__ = ["ABSTRACT", "FILES_ON_LINUX", "NAMES", "PROC", "SELFTEST", "private_network_namespace"]

#: The test-only channel: for portsafe's own test suite, never a setting.
SELFTEST = "_PORTSAFE_SELFTEST_FILE_BACKEND"

_LINUX = sys.platform.startswith("linux")


def private_network_namespace() -> bool:
    """Whether this network namespace has no interface but loopback (``unshare --net``).

    Example:
        >>> private_network_namespace() in (True, False)
        True
    """
    try:
        return all(name == "lo" for _, name in socket.if_nameindex())
    except OSError:
        return False


def _selftest() -> bool:
    if os.environ.get(SELFTEST, "") != "1":
        return False
    if not _LINUX or not private_network_namespace():
        raise InvalidSettingError(
            f"{SELFTEST}=1 is for portsafe's own test suite, in a private network namespace "
            f"(unshare --net) on Linux; it is not a setting. Unset it")
    return True


#: Whether the file backend runs on Linux for portsafe's own tests (:data:`SELFTEST`).
FILES_ON_LINUX = _selftest()
#: Whether reservations are held by abstract names (Linux), not by lock files.
NAMES = _LINUX and not FILES_ON_LINUX
#: Whether the keeper and the port server may use abstract unix-socket addresses.
ABSTRACT = NAMES
#: Whether ``/proc`` may be read for holders, command lines and the like.
PROC = NAMES
