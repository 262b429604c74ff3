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

Defined in ``portsafe._testing``, one idea a module:

* ``factory``: :class:`PortFactory`.
* ``listener``: :func:`open_tcp_listener`.
* ``mixin``: :class:`ReservedPortsMixin`.
* ``internet``: :data:`INTERNET_ENV`, :func:`internet_enabled`,
  :func:`internet_options` and ``INTERNET_SKIP_REASON``.

This module defines the probes (:func:`ipv6_available`, :func:`unix_sockets_available`,
whose answers it caches) and the skip decorators built on them.

Example:
    >>> import unittest
    >>> from portsafe.testing import ReservedPortsMixin
    >>> class ServerTest(ReservedPortsMixin, unittest.TestCase):
    ...     def test_serves(self) -> None:
    ...         port = self.free_tcp_port()  # released when the test ends
    ...         self.assertGreater(port, 0)
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import tempfile
import unittest

# INTERNET_SKIP_REASON (``X as X``) is exported for the pytest plugin, not by ``*``.
from portsafe._testing.factory import PortFactory
from portsafe._testing.internet import INTERNET_ENV, internet_enabled, internet_options
from portsafe._testing.internet import INTERNET_SKIP_REASON as INTERNET_SKIP_REASON  # noqa: PLC0414
from portsafe._testing.listener import open_tcp_listener
from portsafe._testing.mixin import ReservedPortsMixin

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    _T = TypeVar("_T")

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

IPV6_SKIP_REASON = "IPv6 is not available on this host (binding ::1 failed)"
UNIX_SKIP_REASON = "AF_UNIX sockets are not available or cannot be bound here"

# Probed on first use and kept: the answer does not change during a test run, and
# probing at import time would cost every test process that merely imports portsafe.
_ipv6_cache: bool | None = None
_unix_cache: bool | None = None


def ipv6_available() -> bool:
    """Whether this host can bind TCP on IPv6 loopback (``::1``); probed once, then cached.

    Docker's default network has no IPv6, so tests that need it should skip, not fail.

    Returns:
        ``True`` if a TCP socket could be bound to ``[::1]:0``.

    Example:
        >>> isinstance(ipv6_available(), bool)
        True
    """
    global _ipv6_cache
    if _ipv6_cache is None:
        _ipv6_cache = _probe_ipv6()
    return _ipv6_cache


def _probe_ipv6() -> bool:
    from portsafe._core.probe import ipv6_available as core_answer  # one probe for portsafe

    return core_answer()


def unix_sockets_available() -> bool:
    """Whether ``AF_UNIX`` sockets exist and can be bound here; probed once, then cached.

    Some sandboxes (and old Windows builds) have ``socket.AF_UNIX`` but refuse ``bind``
    with ``PermissionError``; CPython's ``skip_unless_bind_unix_socket`` makes the same check.

    Returns:
        ``True`` if a unix stream socket could be bound in a fresh temporary directory.

    Example:
        >>> isinstance(unix_sockets_available(), bool)
        True
    """
    global _unix_cache
    if _unix_cache is None:
        _unix_cache = _probe_unix()
    return _unix_cache


def _probe_unix() -> bool:
    family = getattr(socket, "AF_UNIX", None)
    if family is None:
        return False
    with tempfile.TemporaryDirectory(prefix="portsafe-") as directory:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return False
        with sock:
            try:
                sock.bind(os.path.join(directory, "probe.sock"))
            except OSError:
                return False
    return True


def _guard(obj: _T, check: Callable[[], None], decorator: str) -> _T:
    """Run ``check`` (which raises ``SkipTest``) before a test function or a test class."""
    __tracebackhide__ = True
    if isinstance(obj, type):
        if not issubclass(obj, unittest.TestCase):
            raise TypeError(f"@{decorator} decorates test functions or TestCase classes, "
                            f"not {obj.__name__}")
        test_class: type[unittest.TestCase] = obj
        original = test_class.__dict__.get("setUpClass")

        def set_up_class(cls: type[unittest.TestCase]) -> None:
            __tracebackhide__ = True
            check()  # raising SkipTest from setUpClass skips the whole class
            if original is None:
                super(test_class, cls).setUpClass()  # type: ignore[misc]
            else:
                original.__get__(None, cls)()

        test_class.setUpClass = classmethod(set_up_class)  # type: ignore[assignment,method-assign]
        return obj
    if not callable(obj):
        raise TypeError(f"@{decorator} decorates test functions or TestCase classes, "
                        f"not {obj!r}")
    return _wrap(obj, check, None)  # type: ignore[return-value]


def _wrap(
    func: Callable[..., Any],
    check: Callable[[], None],
    around: Callable[[], Any] | None,
) -> Callable[..., Any]:
    """``func`` preceded by ``check`` and run inside the context manager ``around()``."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            check()
            if around is None:
                return await func(*args, **kwargs)
            with around():
                return await func(*args, **kwargs)

        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        check()
        if around is None:
            return func(*args, **kwargs)
        with around():
            return func(*args, **kwargs)

    return wrapper


def _check_ipv6() -> None:
    if not ipv6_available():
        raise unittest.SkipTest(IPV6_SKIP_REASON)


def _check_unix() -> None:
    if not unix_sockets_available():
        raise unittest.SkipTest(UNIX_SKIP_REASON)


def _check_internet() -> None:
    if not internet_enabled():
        raise unittest.SkipTest(INTERNET_SKIP_REASON)


def requires_ipv6(obj: _T) -> _T:
    """Skip a test function or ``TestCase`` class when IPv6 loopback cannot be bound.

    Decided when the test (or ``setUpClass``) runs, using :func:`ipv6_available`.

    Args:
        obj: A test function or method (sync or async) or a ``unittest.TestCase`` class.

    Returns:
        The wrapped function, or the class with a guarded ``setUpClass``.

    Raises:
        TypeError: If ``obj`` is neither callable nor a ``TestCase`` class.

    Example:
        >>> class T(unittest.TestCase):
        ...     @requires_ipv6
        ...     def test_v6(self) -> None:
        ...         socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    """
    __tracebackhide__ = True
    return _guard(obj, _check_ipv6, "requires_ipv6")


def requires_unix_socket(obj: _T) -> _T:
    """Skip a test function or ``TestCase`` class when ``AF_UNIX`` sockets cannot be bound.

    Decided when the test (or ``setUpClass``) runs, using :func:`unix_sockets_available`.

    Args:
        obj: A test function or method (sync or async) or a ``unittest.TestCase`` class.

    Returns:
        The wrapped function, or the class with a guarded ``setUpClass``.

    Raises:
        TypeError: If ``obj`` is neither callable nor a ``TestCase`` class.

    Example:
        >>> @requires_unix_socket
        ... class T(unittest.TestCase):
        ...     def test_unix(self) -> None:
        ...         socket.socket(socket.AF_UNIX).close()
    """
    __tracebackhide__ = True
    return _guard(obj, _check_unix, "requires_unix_socket")


def requires_internet(
    resource_name: str = "network",
    *,
    timeout: float | None = None,
    errnos: Iterable[int] = (),
) -> Callable[[_T], _T]:
    """Run a test only when the run opted in (``PORTSAFE_INTERNET=1``); else skip it.

    When it runs, the test body is wrapped in
    :func:`portsafe.socket_helper.transient_internet`, so a timeout, a refused or reset
    connection or a failed name lookup becomes a skip instead of a failure. Nothing
    probes the network to decide. On a ``TestCase`` class, ``setUpClass`` checks the
    opt-in and each ``test*`` method is wrapped.

    Args:
        resource_name: What the test reaches for, named in the skip message.
        timeout: Socket default timeout inside the test; ``transient_internet``'s
            default if ``None``.
        errnos: errno values to treat as transient instead of the defaults (as in CPython).

    Returns:
        A decorator for a test function or ``TestCase`` class (use it with parentheses).

    Raises:
        TypeError: If used without parentheses or given a non-str ``resource_name``.

    Example:
        >>> class T(unittest.TestCase):
        ...     @requires_internet("pypi.org")
        ...     def test_download(self) -> None:
        ...         ...
    """
    __tracebackhide__ = True
    if not isinstance(resource_name, str):
        raise TypeError(
            "requires_internet takes a resource name (str), not "
            f"{resource_name!r}; write @requires_internet() with parentheses"
        )
    options = internet_options(timeout=timeout, errnos=errnos)

    def around() -> Any:
        # socket_helper imports more than a test that never runs needs to pay for.
        from portsafe.socket_helper import transient_internet

        return transient_internet(resource_name, **options)

    def decorate(obj: _T) -> _T:
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase):
            prefix = unittest.defaultTestLoader.testMethodPrefix
            for name, value in list(vars(obj).items()):
                if name.startswith(prefix) and callable(value):
                    setattr(obj, name, _wrap(value, _noop, around))
            return _guard(obj, _check_internet, "requires_internet")
        if isinstance(obj, type) or not callable(obj):
            return _guard(obj, _check_internet, "requires_internet")  # raises TypeError
        return _wrap(obj, _check_internet, around)  # type: ignore[return-value]

    return decorate


def _noop() -> None:
    return None
