"""Skip decorators for tests that need IPv6, unix sockets or the internet.

Each decides when the test (or ``setUpClass``) runs, never at import or decoration
time, from the answers of :mod:`portsafe._testing.probes` and
:mod:`portsafe._testing.internet`.
"""

from __future__ import annotations

import functools
import inspect
import unittest

from portsafe._testing.internet import INTERNET_SKIP_REASON, internet_enabled, internet_options
from portsafe._testing.probes import (
    IPV6_SKIP_REASON,
    UNIX_SKIP_REASON,
    ipv6_available,
    unix_sockets_available,
)

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    _T = TypeVar("_T")

__all__ = ["requires_internet", "requires_ipv6", "requires_unix_socket"]


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
        >>> import socket
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
    Arguments, result and errors as :func:`requires_ipv6`.

    Example:
        >>> import socket
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
