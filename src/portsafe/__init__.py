"""portsafe: network ports and sockets for tests that nobody else on the machine gets.

Two ways to be race-free, best first:

* never release: :func:`listen` binds a socket in the test and :func:`spawn` hands it
  to a server process (systemd ``LISTEN_FDS``), so there is no window at all;
* reserve a number: :func:`reserve_port` returns a :class:`Reservation` whose port no
  other portsafe user on the machine gets, that the kernel will not hand out on its own,
  that was free when handed out, and that is released when the holder dies.

Example:
    >>> import portsafe
    >>> with portsafe.reserve_port() as r:
    ...     1 <= r.port <= 65535
    True

Importing this package is cheap: the submodules load on first use.
"""

# Auto mode's start-up hook imports this package before pytest starts, so pytest must
# neither rewrite it nor warn that it cannot. pytest looks for its marker in the module's
# ``__doc__`` at run time; adding it here keeps it out of the documentation.
__doc__ = f"{__doc__}\nPYTEST_DONT_REWRITE\n"

# Every name this module binds for itself is private or deleted below, so that the
# namespace holds the public API only. Both modules were loaded before site ran.
import os as _os
from _thread import RLock as _RLock

# TYPE_CHECKING = False, not typing.TYPE_CHECKING: importing typing costs more than all of
# portsafe, and type checkers treat any name TYPE_CHECKING as True. Imports under it are
# for annotations only. Every module of portsafe does the same and points here.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from portsafe._core.ranges import COMMON_DEV_PORTS, ephemeral_port_range
    from portsafe._core.reservation import Reservation, ReservationGroup
    from portsafe._core.reserve import reserve_port, reserve_ports
    from portsafe._errors import (
        AddressInUseError,
        AddressNotAvailableError,
        InvalidSettingError,
        LockDirError,
        LockUnavailableError,
        NoFreePortError,
        PortNotReadyError,
        PortsafeError,
    )
    from portsafe._net.handoff import listen, listen_fds, spawn
    from portsafe._net.wait import wait_for_port
    from portsafe._net.who import Holder, explain_address_in_use, who_holds
del TYPE_CHECKING

__all__ = [
    "COMMON_DEV_PORTS",
    "AddressInUseError",
    "AddressNotAvailableError",
    "Holder",
    "InvalidSettingError",
    "LockDirError",
    "LockUnavailableError",
    "NoFreePortError",
    "PortNotReadyError",
    "PortsafeError",
    "Reservation",
    "ReservationGroup",
    "__version__",
    "ephemeral_port_range",
    "explain_address_in_use",
    "listen",
    "listen_fds",
    "reserve_port",
    "reserve_ports",
    "spawn",
    "wait_for_port",
    "who_holds",
]

# Which private module defines each public name; loaded on first attribute access so
# that ``import portsafe`` in every test process stays cheap.
_LAZY = {
    "AddressNotAvailableError": "portsafe._errors",
    "InvalidSettingError": "portsafe._errors",
    "LockDirError": "portsafe._errors",
    "LockUnavailableError": "portsafe._errors",
    "NoFreePortError": "portsafe._errors",
    "PortsafeError": "portsafe._errors",
    "Reservation": "portsafe._core.reservation",
    "ReservationGroup": "portsafe._core.reservation",
    "reserve_port": "portsafe._core.reserve",
    "reserve_ports": "portsafe._core.reserve",
    "ephemeral_port_range": "portsafe._core.ranges",
    "COMMON_DEV_PORTS": "portsafe._core.ranges",
    "listen": "portsafe._net.handoff",
    "listen_fds": "portsafe._net.handoff",
    "spawn": "portsafe._net.handoff",
    "wait_for_port": "portsafe._net.wait",
    "PortNotReadyError": "portsafe._errors",
    "who_holds": "portsafe._net.who",
    "Holder": "portsafe._net.who",
    "explain_address_in_use": "portsafe._net.who",
    "AddressInUseError": "portsafe._errors",
}


# The lazy imports run one at a time under this lock, and a fork waits for the one under
# way: a child forked while another thread was inside one would inherit that import's
# module lock held by a thread it does not have, and hang on its own first use of the
# name. The forking thread holds the lock across the fork, so the child can release it.
_imports = _RLock()
if hasattr(_os, "register_at_fork"):  # not on Windows, which has no fork
    _os.register_at_fork(before=_imports.acquire, after_in_parent=_imports.release,
                         after_in_child=_imports.release)


def __getattr__(name: str) -> object:
    if name != "__version__" and name not in _LAZY:
        raise AttributeError(f"module 'portsafe' has no attribute {name!r}")
    with _imports:
        if name == "__version__":
            from importlib.metadata import version

            value: object = version("portsafe")
        else:
            from importlib import import_module

            value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
    return value


def _listed(key: str, value: object) -> bool:
    """Whether ``dir()`` shows a name bound here: dunders, and public submodules."""
    if key.startswith("__") and key.endswith("__"):
        return True
    return not key.startswith("_") and getattr(value, "__name__", None) == f"{__name__}.{key}"


def __dir__() -> list[str]:
    """``__all__``, the public submodules imported so far, and the module's dunders."""
    return sorted({*__all__, *(key for key, value in globals().items() if _listed(key, value))})
