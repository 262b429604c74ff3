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

(PYTEST_DONT_REWRITE: auto mode's start-up hook imports this package before pytest starts,
so pytest must neither rewrite it nor warn that it cannot.)
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing: importing it would cost more than all of portsafe

if TYPE_CHECKING:
    from portsafe._errors import (
        AddressNotAvailableError,
        InvalidSettingError,
        LockDirError,
        NoFreePortError,
        PortsafeError,
    )
    from portsafe._handoff import listen, listen_fds, spawn
    from portsafe._ranges import ephemeral_port_range
    from portsafe._reserve import Reservation, ReservationGroup, reserve_port, reserve_ports
    from portsafe._wait import PortNotReadyError, wait_for_port
    from portsafe._who import AddressInUseError, Holder, explain_address_in_use, who_holds

__all__ = [
    "AddressInUseError",
    "AddressNotAvailableError",
    "Holder",
    "InvalidSettingError",
    "LockDirError",
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
    "NoFreePortError": "portsafe._errors",
    "PortsafeError": "portsafe._errors",
    "Reservation": "portsafe._reserve",
    "ReservationGroup": "portsafe._reserve",
    "reserve_port": "portsafe._reserve",
    "reserve_ports": "portsafe._reserve",
    "ephemeral_port_range": "portsafe._ranges",
    "listen": "portsafe._handoff",
    "listen_fds": "portsafe._handoff",
    "spawn": "portsafe._handoff",
    "wait_for_port": "portsafe._wait",
    "PortNotReadyError": "portsafe._wait",
    "who_holds": "portsafe._who",
    "Holder": "portsafe._who",
    "explain_address_in_use": "portsafe._who",
    "AddressInUseError": "portsafe._who",
}


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import version

        value: object = version("portsafe")
    elif name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'portsafe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
