"""CPython's ``test.support.socket_helper``, public, typed, and without the port race.

Every public name of ``test.support.socket_helper`` from CPython 3.10 to 3.14 is here
with the same signature, defaults, return values and messages, so migrating is one
import line::

    from portsafe import socket_helper          # was: from test.support import socket_helper

The one deliberate difference is :func:`find_unused_port`: CPython's binds port 0,
closes the socket and returns the number, which anybody may take before the caller
binds it. Ours returns a port *reserved* through :func:`portsafe.reserve_port`: no
other portsafe user on the machine gets it for at least
:data:`FIND_UNUSED_PORT_HOLD` seconds (or until this process exits), the kernel does
not hand it out on its own (it lies outside the ephemeral range), and the caller can
still bind it with or without ``SO_REUSEADDR`` because the reservation is a lock
elsewhere, not a socket on the port.

Exceptions keep CPython's semantics: :class:`TestFailed` is a plain ``Exception``
subclass and :class:`ResourceDenied` a ``unittest.SkipTest``, so unittest, pytest and
regrtest report them exactly as they report CPython's. When CPython's ``test.support``
is already imported (its test suite, or a project that mixes both helpers), these two
names *are* CPython's classes, so ``except support.ResourceDenied`` in existing code
keeps catching what this module raises.

Nothing is probed at import time: :data:`IPV6_ENABLED` is computed on first access.
The module is deliberately self-contained (no portsafe import until
:func:`find_unused_port` is called) because CPython's tests patch its globals.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from portsafe._settings import LEASE_DEFAULT

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Container, Iterable, Iterator
    from typing import Any, TypeVar

    from portsafe._core.reservation import Reservation

    _T = TypeVar("_T", bound=Callable[..., Any])

    IPV6_ENABLED: bool

__all__ = [
    "FIND_UNUSED_PORT_HOLD",
    "HOST",
    "IPV6_ENABLED",
    "HOSTv4",
    "HOSTv6",
    "ResourceDenied",
    "TestFailed",
    "bind_port",
    "bind_unix_socket",
    "create_unix_domain_name",
    "find_unused_port",
    "get_socket_conn_refused_errs",
    "has_gethostname",
    "skip_if_tcp_blackhole",
    "skip_unless_bind_unix_socket",
    "tcp_blackhole",
    "transient_internet",
]

HOST = "localhost"
"""The host name tests bind to (CPython: ``"localhost"``)."""
HOSTv4 = "127.0.0.1"
"""The IPv4 loopback address."""
HOSTv6 = "::1"
"""The IPv6 loopback address."""

# WASI does not provide gethostname(); its stub raises OSError(ENOTSUP).
has_gethostname = sys.platform != "wasi"

FIND_UNUSED_PORT_HOLD = LEASE_DEFAULT
"""Seconds a port returned by :func:`find_unused_port` stays reserved, at least."""

# CPython's support.INTERNET_TIMEOUT; used when test.support is not loaded.
_INTERNET_TIMEOUT = 60.0


class TestFailed(Exception):  # noqa: N818 - CPython's name
    """Raised when a test helper finds the test itself is wrong (CPython semantics).

    A plain ``Exception`` subclass, not an ``AssertionError``: unittest and pytest
    report it as an *error* of the test, as they do CPython's ``support.TestFailed``.
    :func:`bind_port` raises it for a TCP socket with ``SO_REUSEADDR`` set.

    Example:
        >>> import socket
        >>> from portsafe import socket_helper
        >>> with socket.socket() as s:
        ...     s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ...     try:
        ...         socket_helper.bind_port(s)
        ...     except socket_helper.TestFailed as exc:
        ...         print(exc)
        tests should never set the SO_REUSEADDR socket option on TCP/IP sockets!
    """

    __test__ = False  # not a test class, whatever pytest's name heuristics say


class ResourceDenied(unittest.SkipTest):
    """Raised when a test needs a resource that is not available (CPython semantics).

    A ``unittest.SkipTest``, so unittest, pytest and regrtest all count the test as
    *skipped*. :func:`transient_internet` raises it for network trouble.

    Example:
        >>> from portsafe import socket_helper
        >>> issubclass(socket_helper.ResourceDenied, unittest.SkipTest)
        True
    """


def _adopt_cpython_exceptions() -> None:
    # Identity with CPython's classes matters where code does
    # `except support.ResourceDenied`; only adopt them if test.support is already
    # loaded, because importing it here would be real work at import time.
    support = sys.modules.get("test.support")
    failed = getattr(support, "TestFailed", None)
    denied = getattr(support, "ResourceDenied", None)
    if (
        isinstance(failed, type)
        and issubclass(failed, Exception)
        and not issubclass(failed, AssertionError)
        and isinstance(denied, type)
        and issubclass(denied, unittest.SkipTest)
    ):
        globals().update(TestFailed=failed, ResourceDenied=denied)


_adopt_cpython_exceptions()


def _support_value(name: str, default: object) -> object:
    # regrtest tunes support.verbose and support.INTERNET_TIMEOUT; honour them when
    # running under it, without importing test.support ourselves.
    support = sys.modules.get("test.support")
    return getattr(support, name, default)


def _print_warning(msg: str) -> None:
    # Same format and stream as CPython's support.print_warning().
    sys.stdout.flush()
    stream = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    for line in msg.splitlines():
        print(f"Warning -- {line}", file=stream)
    stream.flush()


# --------------------------------------------------------------------------- ports

# Ports handed out by find_unused_port(): (deadline, reservation). Expired entries are
# released lazily on later calls, so no thread is needed; the kernel drops the rest
# when the process exits.
_held: list[tuple[float, Reservation]] = []
_held_pid = os.getpid()
_held_lock = threading.Lock()
_atexit_registered = False

# What reserve_port() accepts; AF_UNSPEC and 0 mean "both" (portsafe extensions).
_FAMILIES: dict[int, str] = {
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
    socket.AF_UNSPEC: "AF_UNSPEC",
}
_SOCKTYPES: dict[int, str] = {
    socket.SOCK_STREAM: "SOCK_STREAM",
    socket.SOCK_DGRAM: "SOCK_DGRAM",
    0: "0",
}


def _check_choice(what: str, value: object, allowed: dict[int, str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int such as socket.{allowed[next(iter(allowed))]},"
                        f" not {value!r}")
    if value not in allowed:
        names = ", ".join(f"socket.{n}" if n != "0" else "0" for n in allowed.values())
        raise ValueError(f"find_unused_port() cannot reserve a port for {what}={value!r};"
                         f" use one of {names}")
    return value


def _release_all_held() -> None:
    # The kernel would drop the locks at exit anyway; releasing here keeps the core's
    # "garbage-collected unreleased" ResourceWarning out of interpreter shutdown.
    with _held_lock:
        if _held_pid == os.getpid():
            for _, reservation in _held:
                reservation.release()
        _held.clear()


def _expire_held(now: float) -> None:
    global _held_pid, _atexit_registered
    if not _atexit_registered:
        atexit.register(_release_all_held)
        _atexit_registered = True
    if _held_pid != os.getpid():
        # A fork child inherited the list but not the locks: forget, never release,
        # since releasing an inherited lock could drop the parent's.
        _held.clear()
        _held_pid = os.getpid()
        return
    while _held and _held[0][0] <= now:
        _held.pop(0)[1].release()


def find_unused_port(family: int = socket.AF_INET, socktype: int = socket.SOCK_STREAM) -> int:
    """Return a port number that is reserved for this process and free to bind.

    Compatible with CPython's ``test.support.socket_helper.find_unused_port()``, minus
    its race: the port comes from :func:`portsafe.reserve_port` on the loopback address
    of ``family``, so no other portsafe user on the machine (another test worker,
    another test run) gets it while it is held, and it lies outside the kernel's
    ephemeral range so ``bind(0)`` and outgoing connections do not take it either. The
    reservation is kept for at least :data:`FIND_UNUSED_PORT_HOLD` seconds, released
    lazily by a later call (or by the kernel when the process exits), and at most a
    quarter of the process's descriptor limit are kept (the oldest goes first); it never
    stops the caller from binding the port, with or without ``SO_REUSEADDR``.

    Prefer :func:`bind_port` (or :func:`portsafe.listen`) when you create the socket
    yourself: a bound socket needs no reservation at all.

    Args:
        family: ``socket.AF_INET`` (default), ``socket.AF_INET6``, or
            ``socket.AF_UNSPEC`` for a number free on both (a portsafe extension).
        socktype: ``socket.SOCK_STREAM`` (default), ``socket.SOCK_DGRAM``, or ``0`` for
            a number free for both TCP and UDP (a portsafe extension).

    Returns:
        The port number.

    Raises:
        TypeError: ``family`` or ``socktype`` is not an int.
        ValueError: ``family`` or ``socktype`` is not one listed above; nothing is
            reserved.
        portsafe.NoFreePortError: no candidate port was free (an ``OSError``).
        OSError: the address family is not available on this machine.

    Example:
        >>> import socket
        >>> from portsafe import socket_helper
        >>> port = socket_helper.find_unused_port()
        >>> with socket.create_server(("127.0.0.1", port)) as server:
        ...     server.getsockname()[1] == port
        True
    """
    family = _check_choice("family", family, _FAMILIES)
    socktype = _check_choice("socktype", socktype, _SOCKTYPES)
    from portsafe._core.reserve import reserve_port
    from portsafe._errors import NoFreePortError
    from portsafe._locking.nametable import lease_budget as _lease_budget

    with _held_lock:
        now = time.monotonic()
        _expire_held(now)
        try:
            reservation = reserve_port(family=family, socktype=socktype)
        except NoFreePortError:
            if len(_held) < 2:
                raise
            # Thousands of calls inside one hold period can use up the candidates;
            # the oldest numbers have long been bound by their callers, so give
            # back the older half rather than fail.
            for _, old in _held[: len(_held) // 2]:
                old.release()
            del _held[: len(_held) // 2]
            reservation = reserve_port(family=family, socktype=socktype)
        _held.append((now + FIND_UNUSED_PORT_HOLD, reservation))
        if len(_held) > _lease_budget():  # each is a descriptor on Linux: the oldest goes
            _held.pop(0)[1].release()
        return reservation.port


def bind_port(sock: socket.socket, host: str = HOST) -> int:
    """Bind ``sock`` to a free port on ``host`` and return the port number.

    Exactly CPython's checks: an ``AF_INET`` ``SOCK_STREAM`` socket with
    ``SO_REUSEADDR`` or ``SO_REUSEPORT`` set is refused with :class:`TestFailed`
    (tests should never set them on TCP sockets; they let two servers share a port),
    and where ``SO_EXCLUSIVEADDRUSE`` exists (Windows) it is set so nobody else can
    bind the same address while the test runs. The socket keeps the port, so there is
    no race: prefer this over :func:`find_unused_port` whenever you create the socket.

    Args:
        sock: the socket to bind; it is left open (the caller owns it).
        host: the address to bind (default :data:`HOST`, ``"localhost"``).

    Returns:
        The port the kernel chose.

    Raises:
        TypeError: ``sock`` is not a ``socket.socket``.
        TestFailed: ``sock`` is a TCP/IPv4 socket with ``SO_REUSEADDR`` or
            ``SO_REUSEPORT`` set; clear the option or use a UDP socket.
        OSError: ``bind()`` failed.

    Example:
        >>> import socket
        >>> from portsafe import socket_helper
        >>> with socket.socket() as sock:
        ...     port = socket_helper.bind_port(sock)
        ...     sock.getsockname()[1] == port
        True
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"bind_port() needs a socket.socket, not {sock!r}")
    if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
        if hasattr(socket, "SO_REUSEADDR") and (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        ):
            raise TestFailed("tests should never set the SO_REUSEADDR socket option on "
                             "TCP/IP sockets!")
        if hasattr(socket, "SO_REUSEPORT"):
            try:
                reuseport = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            except OSError:
                # Headers define SO_REUSEPORT but the running kernel does not know it.
                reuseport = 0
            if reuseport == 1:
                raise TestFailed("tests should never set the SO_REUSEPORT socket option on "
                                 "TCP/IP sockets!")
        if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)

    sock.bind((host, 0))
    port: int = sock.getsockname()[1]
    return port


def bind_unix_socket(sock: socket.socket, addr: str | bytes) -> None:
    """Bind an ``AF_UNIX`` socket to ``addr``, skipping the test if that is not permitted.

    Args:
        sock: an ``AF_UNIX`` socket.
        addr: the path (or, on Linux, the abstract name) to bind.

    Raises:
        TypeError: ``sock`` is not a ``socket.socket``.
        ValueError: ``sock`` is not an ``AF_UNIX`` socket (nothing is bound).
        unittest.SkipTest: ``bind()`` raised ``PermissionError``; ``sock`` is closed.
        OSError: any other ``bind()`` failure.

    Example:
        >>> import os, socket, tempfile
        >>> from portsafe import socket_helper
        >>> with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX) as s:
        ...     socket_helper.bind_unix_socket(s, os.path.join(d, "sock"))
        ...     s.getsockname().endswith("sock")
        True
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"bind_unix_socket() needs a socket.socket, not {sock!r}")
    if sock.family != getattr(socket, "AF_UNIX", object()):
        raise ValueError(f"bind_unix_socket() needs an AF_UNIX socket, got {sock.family!r};"
                         " use bind_port() for IP sockets")
    try:
        sock.bind(addr)
    except PermissionError:
        sock.close()
        raise unittest.SkipTest("cannot bind AF_UNIX sockets") from None


def _is_ipv6_enabled() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((HOSTv6, 0))
    except OSError:
        return False
    return True


def _ipv6_enabled() -> bool:
    # Read through globals() so that a test patching IPV6_ENABLED is honoured.
    value = globals().get("IPV6_ENABLED")
    if value is None:
        value = globals()["IPV6_ENABLED"] = _is_ipv6_enabled()
    return bool(value)


def __getattr__(name: str) -> object:
    if name == "IPV6_ENABLED":
        return _ipv6_enabled()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_bind_nix_socket_error: OSError | bool | None = None


def skip_unless_bind_unix_socket(test: _T) -> _T:
    """Decorator: skip the test unless ``bind()`` works for ``AF_UNIX`` sockets here.

    The check binds a socket in a fresh temporary directory once per process and
    caches the answer.

    Args:
        test: a test function or class.

    Returns:
        ``test`` itself, or ``test`` wrapped by ``unittest.skip`` with the reason.

    Example:
        >>> from portsafe import socket_helper
        >>> @socket_helper.skip_unless_bind_unix_socket
        ... def test_unix_server():
        ...     pass
    """
    global _bind_nix_socket_error
    if not hasattr(socket, "AF_UNIX"):
        return unittest.skip("No UNIX Sockets")(test)
    if _bind_nix_socket_error is None:
        directory = tempfile.mkdtemp(prefix="portsafe-")
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(os.path.join(directory, "s"))
            _bind_nix_socket_error = False
        except OSError as exc:
            _bind_nix_socket_error = exc
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if _bind_nix_socket_error:
        msg = f"Requires a functional unix bind(): {_bind_nix_socket_error}"
        return unittest.skip(msg)(test)
    return test


def get_socket_conn_refused_errs() -> list[int]:
    """Return the errno values a refused connection can produce on this platform.

    ``ECONNREFUSED`` plus ``ENETUNREACH`` (Solaris), ``EADDRNOTAVAIL`` (seen on CI
    with ``create_connection()``), ``EHOSTUNREACH``, and ``EAFNOSUPPORT`` when IPv6 is
    disabled.

    Returns:
        A new list of errno numbers.

    Example:
        >>> import errno
        >>> from portsafe import socket_helper
        >>> errno.ECONNREFUSED in socket_helper.get_socket_conn_refused_errs()
        True
    """
    errors = [errno.ECONNREFUSED]
    if hasattr(errno, "ENETUNREACH"):
        errors.append(errno.ENETUNREACH)
    if hasattr(errno, "EADDRNOTAVAIL"):
        errors.append(errno.EADDRNOTAVAIL)
    if hasattr(errno, "EHOSTUNREACH"):
        errors.append(errno.EHOSTUNREACH)
    if not _ipv6_enabled():
        errors.append(errno.EAFNOSUPPORT)
    return errors


_NOT_SET: float = object()  # type: ignore[assignment]  # sentinel typed as the default

_DEFAULT_ERRNOS = (
    ("ECONNREFUSED", 111),
    ("ECONNRESET", 104),
    ("EHOSTUNREACH", 113),
    ("ENETUNREACH", 101),
    ("ETIMEDOUT", 110),
    # socket.create_connection() fails randomly with EADDRNOTAVAIL on some CI.
    ("EADDRNOTAVAIL", 99),
)
_DEFAULT_GAI_ERRNOS = (
    ("EAI_AGAIN", -3),
    ("EAI_FAIL", -4),
    ("EAI_NONAME", -2),
    ("EAI_NODATA", -5),
    # Seen when resolving IPv6-only host names on Windows.
    ("WSANO_DATA", 11004),
)
_URLERROR_MARKERS = ("ConnectionRefusedError", "TimeoutError", "EOFError")


def _unwrap(err: BaseException) -> BaseException:
    import urllib.error

    # urllib can wrap the socket error several times: as args[0], as args[1]
    # (OSError('socket error', msg)), or as __cause__ of a URLError (3.14).
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        args = err.args
        if len(args) >= 1 and isinstance(args[0], OSError):
            err = args[0]
        elif len(args) >= 2 and isinstance(args[1], OSError):
            err = args[1]
        elif isinstance(err, urllib.error.URLError) and err.__cause__ is not None:
            err = err.__cause__
        else:
            break
    return err


def _is_transient(err: BaseException, errnos: Container[int], gai_errnos: Container[int]) -> bool:
    import urllib.error

    n = getattr(err, "errno", None)
    if isinstance(err, TimeoutError):
        return True
    if isinstance(err, socket.gaierror) and n in gai_errnos:
        return True
    if isinstance(err, urllib.error.HTTPError):
        code = getattr(err, "code", None)
        if isinstance(code, int) and 500 <= code <= 599:
            return True
    elif isinstance(err, urllib.error.URLError):
        reason = err.reason
        # CPython tests `"X" in err.reason`, which crashes for an exception reason.
        text = reason if isinstance(reason, str) else repr(reason)
        if any(marker in text for marker in _URLERROR_MARKERS):
            return True
    return n in errnos


@contextlib.contextmanager
def transient_internet(
    resource_name: str, *, timeout: float | None = _NOT_SET, errnos: Iterable[int] = ()
) -> Iterator[None]:
    """Context manager turning network trouble into a skip (:class:`ResourceDenied`).

    Inside the block the default socket timeout is ``timeout`` (restored afterwards).
    An ``OSError`` escaping the block is unwrapped the way urllib wraps it (``args[0]``,
    ``args[1]``, a ``URLError``'s ``__cause__``) and, when it is a timeout, a resolver
    failure (``EAI_AGAIN``, ``EAI_FAIL``, ``EAI_NONAME``, ``EAI_NODATA``,
    ``WSANO_DATA``), an HTTP 5xx, a ``URLError`` whose reason names a refused
    connection, a timeout or an EOF, or has an errno in ``errnos`` (default:
    ``ECONNREFUSED``, ``ECONNRESET``, ``EHOSTUNREACH``, ``ENETUNREACH``, ``ETIMEDOUT``,
    ``EADDRNOTAVAIL``), it is re-raised as :class:`ResourceDenied` chained to the
    original. Anything else propagates unchanged. Passing ``errnos`` replaces the errno
    list and turns off the resolver list, as in CPython.

    Args:
        resource_name: named in the skip message ("Resource 'x' is not available").
        timeout: default socket timeout inside the block; ``None`` leaves it alone.
            Default: CPython's ``support.INTERNET_TIMEOUT`` (60 s) or regrtest's value.
        errnos: errno values to treat as transient instead of the defaults.

    Returns:
        A context manager.

    Raises:
        ResourceDenied: on a transient network error, so the test is skipped.

    Example:
        >>> import socket
        >>> from portsafe import socket_helper
        >>> try:
        ...     with socket_helper.transient_internet("example.org", timeout=5.0):
        ...         raise ConnectionRefusedError(111, "Connection refused")
        ... except socket_helper.ResourceDenied as exc:
        ...     print(exc)
        Resource 'example.org' is not available
    """
    if timeout is _NOT_SET:
        timeout = float(_support_value("INTERNET_TIMEOUT", _INTERNET_TIMEOUT))  # type: ignore[arg-type]
    resource_denied: type[ResourceDenied] = globals()["ResourceDenied"]
    denied = resource_denied(f"Resource {resource_name!r} is not available")
    captured_errnos = list(errnos)
    gai_errnos: list[int] = []
    if not captured_errnos:
        captured_errnos = [getattr(errno, name, num) for name, num in _DEFAULT_ERRNOS]
        gai_errnos = [getattr(socket, name, num) for name, num in _DEFAULT_GAI_ERRNOS]

    old_timeout = socket.getdefaulttimeout()
    try:
        if timeout is not None:
            socket.setdefaulttimeout(timeout)
        yield
    except OSError as exc:
        err = _unwrap(exc)
        if _is_transient(err, captured_errnos, gai_errnos):
            if not _support_value("verbose", 1):
                sys.stderr.write(denied.args[0] + "\n")
            raise denied from err
        raise
    except Exception as exc:
        # nntplib (3.12 and older) reports temporary server trouble this way; only a
        # test that imported it can raise it, so never import it here.
        nntplib = sys.modules.get("nntplib")
        temporary = getattr(nntplib, "NNTPTemporaryError", None)
        if not (isinstance(temporary, type) and isinstance(exc, temporary)):
            raise
        if _support_value("verbose", 1):
            sys.stderr.write(denied.args[0] + "\n")
        raise denied from exc
    finally:
        socket.setdefaulttimeout(old_timeout)


def create_unix_domain_name() -> str:
    """Return a short, unused path relative to the current directory for an AF_UNIX bind.

    The path is about 27 characters (``./test_python_XXXXXXXX.sock``), well within the
    ``sun_path`` limit. Nothing is created: bind it and remove it yourself.

    Returns:
        The path, relative to the current directory.

    Example:
        >>> from portsafe import socket_helper
        >>> socket_helper.create_unix_domain_name().endswith(".sock")
        True
    """
    # mktemp on purpose: bind() must create the file itself, and the name must stay
    # short, so a pre-created temporary file or a long absolute path would not do.
    return tempfile.mktemp(prefix="test_python_", suffix=".sock", dir=os.path.curdir)  # noqa: S306


# sysctl values are assumed not to change while tests run.
_sysctl_cache: dict[str, int | None] = {}


def _get_sysctl(name: str) -> int | None:
    try:
        return _sysctl_cache[name]
    except KeyError:
        pass
    # At least Linux and FreeBSD support "-n".
    cmd = ["sysctl", "-n", name]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False)
    except OSError as exc:
        _print_warning(f"{' '.join(cmd)!r} command failed: {exc!r}")
        _sysctl_cache[name] = None
        return None
    if proc.returncode:
        _print_warning(f"{' '.join(cmd)!r} command failed with exit code {proc.returncode}")
        _sysctl_cache[name] = None  # warn only once
        return None
    output = proc.stdout
    try:
        value = int(output.strip())
    except ValueError as exc:
        _print_warning(f"Failed to parse {' '.join(cmd)!r} command output {output!r}: {exc!r}")
        _sysctl_cache[name] = None
        return None
    _sysctl_cache[name] = value
    return value


def tcp_blackhole() -> bool:
    """Return True when FreeBSD's TCP blackhole (``net.inet.tcp.blackhole``) is on.

    With it, connecting to a closed port times out instead of being refused. Always
    False on other systems (no subprocess is run there).

    Returns:
        Whether the TCP blackhole is enabled.

    Example:
        >>> import sys
        >>> from portsafe import socket_helper
        >>> socket_helper.tcp_blackhole() if not sys.platform.startswith("freebsd") else False
        False
    """
    platform: str = sys.platform  # a plain str, so mypy checks the FreeBSD branch too
    if not platform.startswith("freebsd"):
        return False
    value = _get_sysctl("net.inet.tcp.blackhole")
    if value is None:
        return False  # don't skip when the sysctl cannot be read
    return value != 0


def skip_if_tcp_blackhole(test: _T) -> _T:
    """Decorator: skip the test when :func:`tcp_blackhole` is enabled.

    Args:
        test: a test function or class.

    Returns:
        ``test``, wrapped by ``unittest.skipIf``.

    Example:
        >>> from portsafe import socket_helper
        >>> @socket_helper.skip_if_tcp_blackhole
        ... def test_connection_refused():
        ...     pass
    """
    skip_if = unittest.skipIf(
        tcp_blackhole(), "TCP blackhole is enabled (sysctl net.inet.tcp.blackhole)"
    )
    return skip_if(test)
