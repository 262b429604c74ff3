"""listen()'s port: a reservation, bound, then released (the socket holds the port).

A program outside portsafe may bind a reserved port before listen() does: the next
reservation is tried, :data:`ATTEMPTS` in all, and then the error says which ports were
taken and by whom. Where portsafe cannot reserve at all, the kernel picks (port 0).
"""

from __future__ import annotations

import socket

from portsafe._errors import (
    AddressInUseError,
    AddressNotAvailableError,
    LockDirError,
    NoFreePortError,
)
from portsafe._net.checks import bind_error, in_use
from portsafe._settings import shown

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from portsafe._core.reservation import Reservation

__all__ = ["ATTEMPTS", "bind_reserved", "reserve_for"]

#: Reservations listen() tries when a program outside portsafe binds each one first
#: (listen()'s docstring says how many).
ATTEMPTS = 5


def reserve_for(address: str, family: int, dual_stack: bool) -> Reservation:
    """A reservation of a port free where listen() binds *address* (TCP only: that is
    what it makes). A dual-stack wildcard needs the port free for IPv4 and IPv6.

    Example:
        >>> import socket
        >>> with reserve_for("127.0.0.1", socket.AF_INET, False) as r:
        ...     1 <= r.port <= 65535
        True
    """
    from portsafe._core.reserve import reserve_port  # the lock layer loads on first use

    if dual_stack and address == "::":
        return reserve_port(host="", family=socket.AF_UNSPEC)
    if family == socket.AF_INET and address == "127.0.0.1":
        return reserve_port()  # the same probes, on reserve_port's shortest path
    return reserve_port(host=address, family=family)


def bind_reserved(sock: socket.socket, address: tuple[Any, ...], host: str,
                   dual_stack: bool) -> None:
    """Bind *sock* on a reserved port, released once bound (the socket holds the port
    from then on); the kernel's choice where portsafe cannot reserve one.

    Example:
        >>> import socket
        >>> with socket.socket() as sock:
        ...     bind_reserved(sock, ("127.0.0.1", 0), "127.0.0.1", False)
        ...     sock.getsockname()[1] > 0
        True
    """
    held: list[Reservation] = []
    failure: OSError | None = None
    try:
        for _ in range(ATTEMPTS):
            try:
                reservation = reserve_for(address[0], sock.family, dual_stack)
            except (NoFreePortError, LockDirError, AddressNotAvailableError) as exc:
                _bind_kernel_choice(sock, address, host, exc)
                return
            held.append(reservation)  # kept until the end: the next one is another port
            try:
                sock.bind((address[0], reservation.port, *address[2:]))
                return
            except OSError as exc:
                if not in_use(exc):
                    raise bind_error(exc, host, reservation.port) from exc
                failure = exc  # taken since portsafe checked it, by a program outside it
        raise _all_taken(host, [r.port for r in held]) from failure
    finally:
        for reservation in held:
            reservation.release()


def _bind_kernel_choice(sock: socket.socket, address: tuple[Any, ...], host: str,
                        why: OSError) -> None:
    """Bind port 0 (the kernel picks), the fallback when portsafe cannot reserve: *why*."""
    try:
        sock.bind((address[0], 0, *address[2:]))
    except OSError as exc:
        raise bind_error(exc, host, 0, instead=(
            f"make portsafe able to reserve one outside it (it could not: {why})")) from exc


def _all_taken(host: str, ports: list[int]) -> AddressInUseError:
    from portsafe._net.who import who_holds  # reads /proc: only when needed

    holders = [h.describe() for h in who_holds(ports[-1]) if h.pid is not None]
    seen = f" ({', '.join(dict.fromkeys(holders))} holds port {ports[-1]})" if holders else ""
    return AddressInUseError(
        f"none of the {len(ports)} ports portsafe reserved for {shown(host)} could be "
        f"bound ({', '.join(map(str, ports))}): each was free when portsafe checked it "
        f"and then taken by a program that does not reserve its ports through portsafe"
        f"{seen}. Have that program take its ports from portsafe.reserve_port(), keep "
        "portsafe off its ports (PORTSAFE_EXCLUDE, PORTSAFE_RANGE), or pass port=0 for "
        "the kernel's choice from its ephemeral range", port=ports[-1])
