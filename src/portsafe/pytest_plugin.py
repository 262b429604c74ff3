"""pytest plugin: ports nobody else on the machine gets, as fixtures; network markers.

Loaded through the ``pytest11`` entry point ``portsafe`` once portsafe is installed;
disable it with ``-p no:portsafe``. Importing it costs nothing but pytest itself: the
reservation machinery loads when a fixture first asks for a port.

Fixtures (function scope unless the name says ``_session``):

* ``free_tcp_port`` / ``free_udp_port`` -> ``int``: a port reserved for the test;
* ``free_port_factory`` -> callable taking :func:`portsafe.reserve_port`'s keyword
  options and returning an ``int``; every port it gave is released at teardown;
* ``free_tcp_port_session``, ``free_udp_port_session``, ``free_port_factory_session``:
  the same, held until the session (under xdist: the worker) ends;
* ``tcp_listener`` -> a listening TCP socket on 127.0.0.1, closed at teardown. It never
  releases the port, so it has no race at all: prefer it when the server takes a socket.

Reservations are cross-process locks, so xdist workers and separate pytest runs on the
machine never get the same port while one holds it (see :mod:`portsafe._reserve`).

Markers (registered, so ``--strict-markers`` accepts them):

* ``requires_internet(resource_name="network", *, timeout=None, errnos=())``: skipped
  unless the run opts in with ``--portsafe-internet`` or ``PORTSAFE_INTERNET=1``; when
  it runs, transient network errors become skips (``transient_internet``);
* ``requires_unix_socket``, ``requires_ipv6``: skipped with a reason when unavailable.

If the project or another plugin already declares a marker with one of these names,
portsafe leaves that marker alone (does not register it, never acts on it) and says so
once, with a ``PytestConfigWarning``.

Opt-in (``--portsafe-patch-asyncio`` or ini ``portsafe_patch_asyncio = true``):
pytest-asyncio's ``unused_tcp_port``, ``unused_udp_port``, ``unused_tcp_port_factory``
and ``unused_udp_port_factory`` are replaced by reserved ports, with the same names and
scopes, so existing tests stop racing without being edited.
"""

from __future__ import annotations

import contextlib
import socket
import types
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from typing import NoReturn

    from portsafe.testing import PortFactory

__all__ = [
    "MARKERS",
    "asyncio_port_fixtures",
    "declared_marker_names",
    "free_port_factory",
    "free_port_factory_session",
    "free_tcp_port",
    "free_tcp_port_session",
    "free_udp_port",
    "free_udp_port_session",
    "internet_marker_options",
    "markers_to_register",
    "skip_reason",
    "tcp_listener",
]

#: The markers portsafe registers, by name, with the text ``pytest --markers`` shows.
MARKERS: dict[str, str] = {
    "requires_internet": (
        "requires_internet(resource_name='network', *, timeout=None, errnos=()): skip "
        "unless the run opts in with --portsafe-internet or PORTSAFE_INTERNET=1; when it "
        "runs, transient network errors become skips (portsafe)."
    ),
    "requires_unix_socket": (
        "requires_unix_socket: skip when AF_UNIX sockets cannot be bound here (portsafe)."
    ),
    "requires_ipv6": "requires_ipv6: skip when IPv6 loopback (::1) cannot be bound (portsafe).",
}

_OWNED = pytest.StashKey[frozenset[str]]()
_INTERNET_OPT_IN = "portsafe_internet"
_PATCH_ASYNCIO = "portsafe_patch_asyncio"


# -- plain functions: the logic, testable without a pytest run ---------------------------


def declared_marker_names(lines: list[str]) -> set[str]:
    """The marker names declared by ``markers`` ini lines (``name(args): help``).

    Args:
        lines: The value of ``config.getini("markers")``.

    Returns:
        The set of names.

    Example:
        >>> sorted(declared_marker_names(["slow: slow tests", "net(host): needs host"]))
        ['net', 'slow']
    """
    names = set()
    for line in lines:
        name = line.split(":", 1)[0].split("(", 1)[0].strip()
        if name:
            names.add(name)
    return names


def markers_to_register(declared: set[str]) -> tuple[dict[str, str], list[str]]:
    """Split portsafe's markers into those to register and those someone else declared.

    Args:
        declared: Marker names already declared by the project or other plugins.

    Returns:
        ``(to_register, clashing)``: the markers portsafe owns for this run (name ->
        help text) and the sorted names it must leave alone.

    Example:
        >>> owned, clashing = markers_to_register({"requires_ipv6"})
        >>> sorted(owned), clashing
        (['requires_internet', 'requires_unix_socket'], ['requires_ipv6'])
    """
    owned = {name: text for name, text in MARKERS.items() if name not in declared}
    return owned, sorted(set(MARKERS) - set(owned))


def internet_marker_options(mark: pytest.Mark) -> tuple[str, dict[str, object]]:
    """The ``transient_internet`` arguments a ``requires_internet`` marker asks for.

    Args:
        mark: The marker, e.g. ``requires_internet("pypi.org", timeout=10)``.

    Returns:
        ``(resource_name, keyword_arguments)``.

    Raises:
        TypeError: If the marker has arguments it does not understand.

    Example:
        >>> internet_marker_options(pytest.mark.requires_internet("pypi.org").mark)
        ('pypi.org', {})
    """
    from portsafe.testing import internet_options  # lazily: keep plugin import cheap

    args = list(mark.args)
    kwargs = dict(mark.kwargs)
    if "resource_name" in kwargs:
        args.insert(0, kwargs.pop("resource_name"))
    unknown = sorted(set(kwargs) - {"timeout", "errnos"})
    if len(args) > 1 or unknown:
        raise TypeError(
            "requires_internet takes one resource name and the keywords timeout= and "
            f"errnos=; got args={tuple(mark.args)!r}, kwargs={mark.kwargs!r}"
        )
    name = args[0] if args else "network"
    if not isinstance(name, str):
        raise TypeError(f"requires_internet's resource name must be a str, not {name!r}")
    timeout = kwargs.get("timeout")
    errnos = kwargs.get("errnos", ())
    return name, internet_options(timeout=timeout, errnos=errnos)


def skip_reason(marker_names: set[str], *, internet_opt_in: bool) -> str | None:
    """Why a test carrying these (portsafe-owned) markers must be skipped, if it must.

    Args:
        marker_names: The portsafe markers on the test.
        internet_opt_in: Whether ``--portsafe-internet`` was given.

    Returns:
        The skip reason, or ``None`` to run the test.

    Raises:
        InvalidSettingError: If ``PORTSAFE_INTERNET`` holds a value it cannot parse.

    Example:
        >>> skip_reason({"requires_internet"}, internet_opt_in=True) is None
        True
    """
    from portsafe import testing  # lazily: keep plugin import cheap

    if "requires_internet" in marker_names and not (
        internet_opt_in or testing.internet_enabled()
    ):
        return testing.INTERNET_SKIP_REASON
    if "requires_unix_socket" in marker_names and not testing.unix_sockets_available():
        return testing.UNIX_SKIP_REASON
    if "requires_ipv6" in marker_names and not testing.ipv6_available():
        return testing.IPV6_SKIP_REASON
    return None


def _skip_at_item(reason: str) -> NoReturn:
    # Reported at the test's location, as a skip marker would be, rather than at this
    # file (pytest.skip would blame the plugin in the -rs summary).
    raise pytest.skip.Exception(reason, _use_item_location=True)


def _new_factory() -> PortFactory:
    from portsafe.testing import PortFactory  # lazily: keep plugin import cheap

    return PortFactory()


# -- hooks ----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add portsafe's command-line options and ini settings."""
    group = parser.getgroup("portsafe", "portsafe (reserved ports)")
    group.addoption(
        "--portsafe-internet",
        action="store_true",
        default=False,
        dest=_INTERNET_OPT_IN,
        help="run tests marked requires_internet (also: PORTSAFE_INTERNET=1).",
    )
    group.addoption(
        "--portsafe-patch-asyncio",
        action="store_true",
        default=False,
        dest=_PATCH_ASYNCIO,
        help="make pytest-asyncio's unused_*_port fixtures hand out reserved ports.",
    )
    parser.addini(
        _PATCH_ASYNCIO,
        type="bool",
        default=False,
        help="make pytest-asyncio's unused_*_port fixtures hand out reserved ports.",
    )


# trylast: every other plugin and conftest has declared its markers by then.
@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register the markers nobody else declared; install the pytest-asyncio override."""
    owned, clashing = markers_to_register(declared_marker_names(config.getini("markers")))
    for text in owned.values():
        config.addinivalue_line("markers", text)
    config.stash[_OWNED] = frozenset(owned)
    if clashing:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"portsafe: marker(s) {', '.join(clashing)} are already declared by this "
                "project or another plugin; portsafe leaves them alone and does not act "
                "on them"
            ),
            stacklevel=2,
        )
    if config.getoption(_PATCH_ASYNCIO, False) or config.getini(_PATCH_ASYNCIO):
        # Registered after every entry-point plugin, so these definitions win over
        # pytest-asyncio's; a conftest's own definitions still win over both.
        config.pluginmanager.register(asyncio_port_fixtures(), "portsafe-asyncio-ports")


def _owned_markers(item: pytest.Item) -> set[str]:
    owned = item.config.stash.get(_OWNED, frozenset())
    return {name for name in owned if item.get_closest_marker(name) is not None}


# tryfirst: skip before any fixture is set up (and before it reserves anything).
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip tests whose portsafe markers ask for what this run or host lacks."""
    names = _owned_markers(item)
    if not names:
        return
    mark = item.get_closest_marker("requires_internet")
    if "requires_internet" in names and mark is not None:
        internet_marker_options(mark)  # a malformed marker is an error, even when skipped
    reason = skip_reason(names, internet_opt_in=bool(item.config.getoption(_INTERNET_OPT_IN)))
    if reason is not None:
        _skip_at_item(reason)


def _runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Run ``requires_internet`` tests inside ``transient_internet`` (errors -> skips)."""
    mark = item.get_closest_marker("requires_internet")
    if mark is None or "requires_internet" not in item.config.stash.get(_OWNED, frozenset()):
        return (yield)
    import unittest  # only for tests that carry the marker

    from portsafe.socket_helper import transient_internet

    name, options = internet_marker_options(mark)
    try:
        with transient_internet(name, **options):  # type: ignore[arg-type]
            return (yield)
    except unittest.SkipTest as exc:  # ResourceDenied: report it as pytest's own skip
        _skip_at_item(str(exc))


# pluggy < 1.1 has no wrapper=True. Stay importable there (this plugin loads in every
# pytest run): requires_internet still skips unless opted in; only the conversion of
# transient errors into skips is missing.
with contextlib.suppress(TypeError):
    pytest_runtest_call = pytest.hookimpl(wrapper=True)(_runtest_call)


# -- fixtures: thin wrappers -------------------------------------------------------------


@pytest.fixture
def free_tcp_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 reserved for this test; released at teardown.

    No other portsafe user on the machine (xdist worker, other pytest run) gets it
    while the test runs, and the kernel will not hand it out on its own. Bind it
    yourself or pass it to a server (``--port``).
    """
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_STREAM)


@pytest.fixture
def free_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 reserved for this test; released at teardown."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_DGRAM)


@pytest.fixture
def free_port_factory() -> Iterator[PortFactory]:
    """Reserve any number of ports: ``free_port_factory(**reserve_port options) -> int``.

    Options are ``host``, ``family``, ``socktype``, ``ports`` and ``exclude``, as for
    ``portsafe.reserve_port``. Every port it gave is released at teardown.
    """
    with _new_factory() as factory:
        yield factory


@pytest.fixture(scope="session")
def free_tcp_port_session() -> Iterator[int]:
    """A TCP port on 127.0.0.1 reserved until the session (xdist: the worker) ends."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_STREAM)


@pytest.fixture(scope="session")
def free_udp_port_session() -> Iterator[int]:
    """A UDP port on 127.0.0.1 reserved until the session (xdist: the worker) ends."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_DGRAM)


@pytest.fixture(scope="session")
def free_port_factory_session() -> Iterator[PortFactory]:
    """Like ``free_port_factory``, but ports are held until the session ends."""
    with _new_factory() as factory:
        yield factory


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    """A bound, listening TCP socket on 127.0.0.1; closed at teardown. No race at all.

    The port is never released between choosing and serving: hand the socket to the
    server (``asyncio.start_server(sock=tcp_listener)``, ``portsafe.spawn``).
    """
    from portsafe.testing import open_tcp_listener  # lazily: keep plugin import cheap

    with open_tcp_listener() as sock:
        yield sock


def _unused_tcp_port() -> Iterator[int]:
    """A reserved TCP port on 127.0.0.1, released at teardown (portsafe)."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_STREAM)


def _unused_udp_port() -> Iterator[int]:
    """A reserved UDP port on 127.0.0.1, released at teardown (portsafe)."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_DGRAM)


def _unused_tcp_port_factory() -> Iterator[Callable[[], int]]:
    """A factory of distinct reserved TCP ports, held until the session ends (portsafe)."""
    with _new_factory() as take:
        yield lambda: take(socktype=socket.SOCK_STREAM)


def _unused_udp_port_factory() -> Iterator[Callable[[], int]]:
    """A factory of distinct reserved UDP ports, held until the session ends (portsafe)."""
    with _new_factory() as take:
        yield lambda: take(socktype=socket.SOCK_DGRAM)


def asyncio_port_fixtures() -> types.ModuleType:
    """A plugin replacing pytest-asyncio's port fixtures, same names and scopes.

    pytest-asyncio defines ``unused_tcp_port`` and ``unused_udp_port`` (function scope)
    and ``unused_tcp_port_factory`` and ``unused_udp_port_factory`` (session scope,
    zero-argument callables) by binding port 0 and closing: the race. These hand out
    reserved ports instead; the factories hold every port they gave until the session
    ends, which is also how pytest-asyncio's avoid returning a number twice.

    Returns:
        A module object to register with ``config.pluginmanager.register``; the plugin
        does so when ``--portsafe-patch-asyncio`` or ``portsafe_patch_asyncio`` is on.

    Example:
        >>> sorted(n for n in vars(asyncio_port_fixtures()) if n.startswith("unused"))
        ['unused_tcp_port', 'unused_tcp_port_factory', 'unused_udp_port', 'unused_udp_port_factory']
    """
    # Plain functions turned into fixtures here, not at module level, so that they exist
    # only in runs that opted in; a module (not a class) avoids pytest's deprecation of
    # session-scoped fixtures defined as instance methods.
    module = types.ModuleType(f"{__name__}.asyncio_ports", asyncio_port_fixtures.__doc__)
    module.unused_tcp_port = pytest.fixture(_unused_tcp_port, name="unused_tcp_port")  # type: ignore[attr-defined]
    module.unused_udp_port = pytest.fixture(_unused_udp_port, name="unused_udp_port")  # type: ignore[attr-defined]
    module.unused_tcp_port_factory = pytest.fixture(  # type: ignore[attr-defined]
        _unused_tcp_port_factory, scope="session", name="unused_tcp_port_factory"
    )
    module.unused_udp_port_factory = pytest.fixture(  # type: ignore[attr-defined]
        _unused_udp_port_factory, scope="session", name="unused_udp_port_factory"
    )
    return module
