"""Reserved ports for unittest, and the plain helpers the pytest plugin wraps.

For ``unittest`` (and anything built on it, such as ``IsolatedAsyncioTestCase``):

* :class:`ReservedPortsMixin` gives a ``TestCase`` methods that reserve a port (or open a
  listening socket) and release it with ``addCleanup``, so nothing outlives the test,
  whether it passes, fails or errors. :meth:`ReservedPortsMixin.free_port_for_class`
  does the same for ``setUpClass`` with ``addClassCleanup``.
* :func:`requires_ipv6`, :func:`requires_unix_socket` and :func:`requires_internet` skip
  a test or a whole ``TestCase`` class when the machine lacks what it needs. They decide
  when the test runs, never at import or decoration time.

Suites that keep their own bind-and-close port helpers need no edit at all: run them
with ``PORTSAFE_AUTO=1 python -m unittest`` (auto mode, through the start-up hook that
portsafe installs; see docs/auto.md) and every bind to port 0 gets a reserved port.

The pytest fixtures and markers of :mod:`portsafe.pytest_plugin` are thin wrappers over
:class:`PortFactory`, :func:`ipv6_available`, :func:`unix_sockets_available` and
:func:`internet_enabled`, so both frameworks behave the same.

The names are defined in ``portsafe._testing``, one idea a module:

* ``factory``: :class:`PortFactory`.
* ``listener``: :func:`open_tcp_listener`.
* ``mixin``: :class:`ReservedPortsMixin`.
* ``probes``: :func:`ipv6_available`, :func:`unix_sockets_available` and the skip
  reasons ``IPV6_SKIP_REASON`` and ``UNIX_SKIP_REASON``.
* ``internet``: :data:`INTERNET_ENV`, :func:`internet_enabled`,
  :func:`internet_options` and ``INTERNET_SKIP_REASON``.
* ``skips``: :func:`requires_ipv6`, :func:`requires_unix_socket` and
  :func:`requires_internet`.

Example:
    >>> import unittest
    >>> from portsafe.testing import ReservedPortsMixin
    >>> class ServerTest(ReservedPortsMixin, unittest.TestCase):
    ...     def test_serves(self) -> None:
    ...         port = self.free_tcp_port()  # released when the test ends
    ...         self.assertGreater(port, 0)
"""

from __future__ import annotations

# The skip reasons (``X as X``) are exported for the pytest plugin, not by ``*``.
from portsafe._testing.factory import PortFactory
from portsafe._testing.internet import INTERNET_ENV, internet_enabled, internet_options
from portsafe._testing.internet import INTERNET_SKIP_REASON as INTERNET_SKIP_REASON  # noqa: PLC0414
from portsafe._testing.listener import open_tcp_listener
from portsafe._testing.mixin import ReservedPortsMixin
from portsafe._testing.probes import IPV6_SKIP_REASON as IPV6_SKIP_REASON  # noqa: PLC0414
from portsafe._testing.probes import UNIX_SKIP_REASON as UNIX_SKIP_REASON  # noqa: PLC0414
from portsafe._testing.probes import ipv6_available, unix_sockets_available
from portsafe._testing.skips import requires_internet, requires_ipv6, requires_unix_socket

__all__ = [
    "INTERNET_ENV",
    "PortFactory",
    "ReservedPortsMixin",
    "internet_enabled",
    "internet_options",
    "ipv6_available",
    "open_tcp_listener",
    "requires_internet",
    "requires_ipv6",
    "requires_unix_socket",
    "unix_sockets_available",
]
