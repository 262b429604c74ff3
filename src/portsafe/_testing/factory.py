"""Reserved port numbers handed out one at a time and released all at once."""

from __future__ import annotations

from portsafe._core.reserve import reserve_port

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Unpack

    from portsafe._core.reservation import Reservation
    from portsafe._core.reserve import ReserveOptions

__all__ = ["PortFactory"]


class PortFactory:
    """Hands out reserved port numbers and releases every one of them at once.

    Each call reserves a new port with :func:`portsafe.reserve_port` (so no other
    portsafe user on the machine gets it while it is held) and returns its number.
    :meth:`release_all` (or leaving the ``with`` block) releases them all; it is what
    the ``reserved_port_factory`` fixture runs at teardown.

    Example:
        >>> import socket
        >>> with PortFactory() as take:
        ...     tcp, udp = take(), take(socktype=socket.SOCK_DGRAM)
        ...     tcp != udp
        True
    """

    def __init__(self) -> None:
        self._reservations: list[Reservation] = []
        self._closed = False

    def __call__(self, **options: Unpack[ReserveOptions]) -> int:
        """Reserve one more port and return its number.

        Args:
            **options: :func:`portsafe.reserve_port`'s keyword options (``host``,
                ``family``, ``socktype``, ``ports``, ``exclude``).

        Returns:
            The reserved port number, held until :meth:`release_all`.

        Raises:
            RuntimeError: If the factory was already released (a session fixture used
                after its session, say).
            NoFreePortError: If no candidate port could be reserved.
            InvalidSettingError: If an option has a value portsafe cannot use.

        Example:
            >>> with PortFactory() as take:
            ...     take(ports=range(20000, 20100)) in range(20000, 20100)
            True
        """
        __tracebackhide__ = True
        if self._closed:
            raise RuntimeError(
                "this port factory was already released (its fixture or test ended); "
                "request the fixture in the test that needs the port"
            )
        reservation = reserve_port(**options)
        self._reservations.append(reservation)
        return reservation.port

    @property
    def reservations(self) -> tuple[Reservation, ...]:
        """The reservations made so far, oldest first, including released ones.

        Example:
            >>> with PortFactory() as take:
            ...     port = take()
            ...     take.reservations[0].port == port
            True
        """
        return tuple(self._reservations)

    def release_all(self) -> None:
        """Release every port handed out; later calls raise ``RuntimeError``. Idempotent.

        Example:
            >>> take = PortFactory()
            >>> _ = take()
            >>> take.release_all()
            >>> take.reservations[0].released
            True
        """
        __tracebackhide__ = True
        self._closed = True
        errors: list[BaseException] = []
        for reservation in self._reservations:
            try:
                reservation.release()
            except Exception as exc:  # noqa: BLE001, PERF203 - release the others, then raise
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> PortFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        self.release_all()
