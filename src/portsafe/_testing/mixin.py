"""Ports and listening sockets for a ``unittest.TestCase``, released by its cleanups."""

from __future__ import annotations

import socket
import unittest

from portsafe._core.reserve import reserve_port
from portsafe._testing.listener import open_tcp_listener

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from typing_extensions import Unpack

    from portsafe._core.reserve import ReserveOptions

__all__ = ["ReservedPortsMixin"]


def _as_test_case(obj: object, method: str) -> unittest.TestCase:
    __tracebackhide__ = True
    if not isinstance(obj, unittest.TestCase):
        raise TypeError(
            f"{method}() needs a unittest.TestCase: mix ReservedPortsMixin into a TestCase "
            f"subclass (got {type(obj).__name__})"
        )
    return obj


class ReservedPortsMixin:
    """``TestCase`` methods that reserve ports and release them with ``addCleanup``.

    Put it before ``unittest.TestCase`` (or ``IsolatedAsyncioTestCase``) in the bases.
    Every port or socket it hands out is released when the test ends, pass or fail,
    after ``tearDown`` (cleanups run last-in, first-out).

    Example:
        >>> import unittest
        >>> class T(ReservedPortsMixin, unittest.TestCase):
        ...     def test_it(self) -> None:
        ...         self.assertNotEqual(self.free_tcp_port(), self.free_udp_port())
        >>> result = unittest.TestResult()
        >>> _ = T("test_it").run(result)
        >>> result.wasSuccessful()
        True
    """

    def free_port(self, **options: Unpack[ReserveOptions]) -> int:
        """Reserve a port for this test; it is released by ``addCleanup``.

        Args:
            **options: :func:`portsafe.reserve_port`'s keyword options (``host``,
                ``family``, ``socktype``, ``ports``, ``exclude``).

        Returns:
            The reserved port number.

        Raises:
            TypeError: If the mixin is not part of a ``unittest.TestCase``.
            NoFreePortError: If no candidate port could be reserved.

        Example:
            >>> # inside a test method:  port = self.free_port(socktype=0)  # TCP and UDP
        """
        __tracebackhide__ = True
        case = _as_test_case(self, "free_port")
        reservation = reserve_port(**options)
        case.addCleanup(reservation.release)
        return reservation.port

    def free_tcp_port(self) -> int:
        """Reserve a TCP port on 127.0.0.1 for this test (released by ``addCleanup``).

        Returns and raises as :meth:`free_port`.

        Example:
            >>> # inside a test method:  server = start_server(port=self.free_tcp_port())
        """
        __tracebackhide__ = True
        return self.free_port(socktype=socket.SOCK_STREAM)

    def free_udp_port(self) -> int:
        """Reserve a UDP port on 127.0.0.1 for this test (released by ``addCleanup``).

        Returns and raises as :meth:`free_port`.

        Example:
            >>> # inside a test method:  sock.bind(("127.0.0.1", self.free_udp_port()))
        """
        __tracebackhide__ = True
        return self.free_port(socktype=socket.SOCK_DGRAM)

    def tcp_listener(self, host: str = "127.0.0.1", *, backlog: int = 128) -> socket.socket:
        """A listening TCP socket for this test, closed by ``addCleanup``; no race at all.

        Args:
            host: A numeric address to bind; IPv4 loopback by default.
            backlog: The ``listen()`` backlog.

        Returns:
            The bound, listening socket.

        Raises:
            TypeError: If the mixin is not part of a ``unittest.TestCase``.
            OSError: If ``host`` cannot be bound.

        Example:
            >>> # inside a test method:  sock = self.tcp_listener(); serve(sock)
        """
        __tracebackhide__ = True
        case = _as_test_case(self, "tcp_listener")
        sock = open_tcp_listener(host, backlog=backlog)
        case.addCleanup(sock.close)
        return sock

    @classmethod
    def free_port_for_class(cls, **options: Unpack[ReserveOptions]) -> int:
        """Reserve a port for the whole class (call it in ``setUpClass``).

        The port is released by ``addClassCleanup``, after ``tearDownClass``.

        Args:
            **options: :func:`portsafe.reserve_port`'s keyword options (``host``,
                ``family``, ``socktype``, ``ports``, ``exclude``).

        Returns:
            The reserved port number.

        Raises:
            TypeError: If the class is not a ``unittest.TestCase``.
            NoFreePortError: If no candidate port could be reserved.

        Example:
            >>> # @classmethod
            >>> # def setUpClass(cls):  cls.port = cls.free_port_for_class()
        """
        __tracebackhide__ = True
        if not issubclass(cls, unittest.TestCase):
            raise TypeError(
                "free_port_for_class() needs a unittest.TestCase: mix ReservedPortsMixin "
                f"into a TestCase subclass (got {cls.__name__})"
            )
        reservation = reserve_port(**options)
        cls.addClassCleanup(reservation.release)
        return reservation.port
