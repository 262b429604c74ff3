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

from portsafe._core.reserve import reserve_port
from portsafe._errors import InvalidSettingError

TYPE_CHECKING = False  # typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import TracebackType
    from typing import Any, TypeVar

    from typing_extensions import Unpack

    from portsafe._core.reserve import Reservation, ReserveOptions

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

#: Environment variable that opts a run in to tests that need the internet.
INTERNET_ENV = "PORTSAFE_INTERNET"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

IPV6_SKIP_REASON = "IPv6 is not available on this host (binding ::1 failed)"
UNIX_SKIP_REASON = "AF_UNIX sockets are not available or cannot be bound here"
INTERNET_SKIP_REASON = (
    f"needs the internet; opt in with --portsafe-internet (pytest) or {INTERNET_ENV}=1"
)

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


def internet_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the run opted in to tests that need the internet, by ``PORTSAFE_INTERNET``.

    The answer comes from the environment only, never from probing the network (a probe
    would send traffic off the machine and make results depend on the weather).

    Args:
        environ: Where to read the variable; ``os.environ`` if omitted.

    Returns:
        ``True`` for ``1``/``true``/``yes``/``on``; ``False`` when unset or
        ``0``/``false``/``no``/``off``/empty (any case).

    Raises:
        InvalidSettingError: If the variable holds anything else.

    Example:
        >>> internet_enabled({"PORTSAFE_INTERNET": "1"})
        True
        >>> internet_enabled({})
        False
    """
    __tracebackhide__ = True
    value = (os.environ if environ is None else environ).get(INTERNET_ENV, "")
    normalized = value.strip().lower()
    if normalized in _TRUE:
        return True
    if normalized in _FALSE:
        return False
    raise InvalidSettingError(
        f"{INTERNET_ENV}={value!r} is not understood; set it to 1 to run tests that need "
        f"the internet, or to 0 (or unset it) to skip them"
    )


def internet_options(
    *, timeout: float | None = None, errnos: Iterable[int] = ()
) -> dict[str, Any]:
    """Keyword arguments for ``transient_internet``, leaving out what was not chosen.

    An empty ``errnos`` is left out rather than passed, because passing ``errnos``
    replaces ``transient_internet``'s defaults (as in CPython).

    Args:
        timeout: Socket default timeout inside the test, or ``None`` for the default.
        errnos: errno values to treat as transient instead of the defaults (as in CPython).

    Returns:
        A dict to pass as ``**kwargs``.

    Raises:
        TypeError: If ``timeout`` is not a number or ``errnos`` holds a non-int.

    Example:
        >>> internet_options(timeout=5)
        {'timeout': 5.0}
    """
    __tracebackhide__ = True
    options: dict[str, Any] = {}
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        options["timeout"] = float(timeout)
    codes = tuple(errnos)
    for code in codes:
        if not isinstance(code, int) or isinstance(code, bool):
            raise TypeError(f"errnos must hold ints such as errno.ECONNRESET, not {code!r}")
    if codes:
        options["errnos"] = codes
    return options


def open_tcp_listener(host: str = "127.0.0.1", *, backlog: int = 128) -> socket.socket:
    """Bind and listen on a TCP socket at ``host`` on a port the kernel picks.

    Nothing is released between choosing the port and using it, so there is no race at
    all: hand the socket itself to the server under test (``asyncio.start_server(sock=)``,
    ``socketserver`` with ``bind_and_activate=False``, ``portsafe.spawn``).

    Args:
        host: A numeric IPv4 or IPv6 address; loopback by default.
        backlog: The ``listen()`` backlog.

    Returns:
        The listening socket; the caller closes it.

    Raises:
        TypeError: If ``host`` is not a str or ``backlog`` not an int.
        OSError: If the address cannot be bound (for example ``::1`` without IPv6).

    Example:
        >>> with open_tcp_listener() as sock:
        ...     sock.getsockname()[0]
        '127.0.0.1'
    """
    __tracebackhide__ = True
    if not isinstance(host, str):
        raise TypeError(f"host must be a str such as '127.0.0.1', not {host!r}")
    if not isinstance(backlog, int) or isinstance(backlog, bool):
        raise TypeError(f"backlog must be an int, not {backlog!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        if exclusive is not None:  # Windows: nobody else may bind the port while we hold it
            sock.setsockopt(socket.SOL_SOCKET, exclusive, 1)
        sock.bind((host, 0))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


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

        Returns:
            The reserved port number.

        Raises:
            TypeError: If the mixin is not part of a ``unittest.TestCase``.
            NoFreePortError: If no candidate port could be reserved.

        Example:
            >>> # inside a test method:  server = start_server(port=self.free_tcp_port())
        """
        __tracebackhide__ = True
        return self.free_port(socktype=socket.SOCK_STREAM)

    def free_udp_port(self) -> int:
        """Reserve a UDP port on 127.0.0.1 for this test (released by ``addCleanup``).

        Returns:
            The reserved port number.

        Raises:
            TypeError: If the mixin is not part of a ``unittest.TestCase``.
            NoFreePortError: If no candidate port could be reserved.

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
