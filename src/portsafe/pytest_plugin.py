"""pytest plugin: auto mode, ports nobody else on the machine gets as fixtures, markers.

Loaded through the ``pytest11`` entry point ``portsafe`` once portsafe is installed;
disable it with ``-p no:portsafe``. Importing it costs nothing but pytest itself: the
reservation machinery loads when a fixture first asks for a port, or when auto mode
starts.

Auto mode (``--portsafe-auto``, ini ``portsafe_auto = true`` or ``PORTSAFE_AUTO=1``;
``PORTSAFE_AUTO=0`` turns it off; ``--portsafe-patch-asyncio`` and ini
``portsafe_patch_asyncio`` are aliases): every bind to port 0 in the test process gets
a port portsafe reserved (:mod:`portsafe._auto.switch`), ``PORTSAFE_AUTO=1`` is set for the
processes the tests start, and pytest-asyncio's ``unused_*_port`` fixtures hand out
reservations (:mod:`portsafe._pytest.pickers`). The terminal summary says how many
ports auto mode reserved, summed over xdist workers, and lists every fallback to the
kernel's pick.

Fixtures (function scope unless the name says ``_session``):

* ``reserved_tcp_port`` / ``reserved_udp_port`` -> ``int``: a port reserved for the test;
* ``reserved_port_factory`` -> callable taking :func:`portsafe.reserve_port`'s keyword
  options and returning an ``int``; every port it gave is released at teardown;
* ``reserved_tcp_port_session``, ``reserved_udp_port_session``,
  ``reserved_port_factory_session``: the same, held until the session (under xdist:
  the worker) ends;
* ``tcp_listener`` -> a listening TCP socket on 127.0.0.1, closed at teardown. It never
  releases the port, so it has no race at all: prefer it when the server takes a socket.

If another plugin defines a fixture with one of these names (``free_tcp_port`` and
``free_udp_port`` are anyio's, hence portsafe's ``reserved_`` prefix), the plugin says
so once with a ``PytestConfigWarning``; a conftest.py's own definition is silent.

Markers (registered, so ``--strict-markers`` accepts them):

* ``requires_internet(resource_name="network", *, timeout=None, errnos=())``: skipped
  unless the run opts in with ``--portsafe-internet`` or ``PORTSAFE_INTERNET=1``; when
  it runs, transient network errors become skips (``transient_internet``);
* ``requires_unix_socket``, ``requires_ipv6``: skipped with a reason when unavailable.

If the project or another plugin already declares a marker with one of these names,
portsafe leaves that marker alone (does not register it, never acts on it) and says so
once, with a ``PytestConfigWarning``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from portsafe import _settings
from portsafe._pytest import auto as _pytest_auto
from portsafe._pytest.markers import (
    MARKERS,
    declared_marker_names,
    internet_marker_options,
    markers_to_register,
    skip_at_item,
    skip_reason,
)
from portsafe._pytest.names import FIXTURE_NAMES, clash_message, clashing_plugins
from portsafe._pytest.pickers import asyncio_port_fixtures, ports_handed_out

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from portsafe.testing import PortFactory

__all__ = [
    "FIXTURE_NAMES",
    "MARKERS",
    "asyncio_port_fixtures",
    "declared_marker_names",
    "internet_marker_options",
    "markers_to_register",
    "reserved_port_factory",
    "reserved_port_factory_session",
    "reserved_tcp_port",
    "reserved_tcp_port_session",
    "reserved_udp_port",
    "reserved_udp_port_session",
    "skip_reason",
    "tcp_listener",
]

_OWNED = pytest.StashKey[frozenset[str]]()
_INTERNET_OPT_IN = "portsafe_internet"
_AUTO = "portsafe_auto"
_PATCH_ASYNCIO = "portsafe_patch_asyncio"  # the older name of _AUTO
_WORKER_OUTPUT_KEY = "portsafe_auto"


@dataclass
class _AutoRun:
    """What this run's auto mode did, for the summary and for undoing it at the end."""

    source: str
    enabled_here: bool = False  # we called enable(), so we call disable()
    fixtures_before: int = 0  # the picker count is per process; in-process runs add up
    worker_stats: list[dict[str, object]] = field(default_factory=list)


_AUTO_RUN = pytest.StashKey[_AutoRun]()
_OVERRIDDEN = pytest.StashKey[str]()


def _new_factory() -> PortFactory:
    from portsafe.testing import PortFactory  # lazily: keep plugin import cheap

    return PortFactory()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


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
    auto_help = (
        "auto mode: every bind to port 0 in the tests, and in the processes they start, "
        "gets a port portsafe reserved (also: PORTSAFE_AUTO=1; PORTSAFE_AUTO=0 turns it off)."
    )
    group.addoption(
        "--portsafe-auto", action="store_true", default=False, dest=_AUTO, help=auto_help
    )
    group.addoption(
        "--portsafe-patch-asyncio",
        action="store_true",
        default=False,
        dest=_PATCH_ASYNCIO,
        help="alias of --portsafe-auto (its older name).",
    )
    parser.addini(_AUTO, type="bool", default=False, help=auto_help)
    parser.addini(
        _PATCH_ASYNCIO, type="bool", default=False, help="alias of portsafe_auto (older name)."
    )


def _warn(config: pytest.Config, message: str) -> None:
    config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)


def _register_markers(config: pytest.Config) -> None:
    owned, clashing = markers_to_register(declared_marker_names(config.getini("markers")))
    for text in owned.values():
        config.addinivalue_line("markers", text)
    config.stash[_OWNED] = frozenset(owned)
    if clashing:
        _warn(
            config,
            f"portsafe: marker(s) {', '.join(clashing)} are already declared by this "
            "project or another plugin; portsafe leaves them alone and does not act on them",
        )


def _check_fixture_names(config: pytest.Config) -> None:
    if _is_xdist_worker(config):  # the controller loads the same plugins and warns once
        return
    this = sys.modules[__name__]
    ours = [this, *(getattr(this, name) for name in FIXTURE_NAMES)]
    clashes = clashing_plugins(config.pluginmanager.list_name_plugin(), ignore=ours)
    if clashes:
        _warn(config, clash_message(clashes))


def _auto_requested(config: pytest.Config) -> tuple[bool, str, str]:
    """``(on, source, overridden)``: *overridden* names the setting PORTSAFE_AUTO=0 beat."""
    try:
        env = _settings.auto_mode()
    except ValueError as exc:  # InvalidSettingError: a usage error, not a crash
        raise pytest.UsageError(str(exc)) from None
    asked = {
        "flag": bool(config.getoption(_AUTO, False)),
        "alias_flag": bool(config.getoption(_PATCH_ASYNCIO, False)),
        "ini": bool(config.getini(_AUTO)),
        "alias_ini": bool(config.getini(_PATCH_ASYNCIO)),
    }
    on, source = _pytest_auto.decide(**asked, env=env)
    overridden = ""
    if env is False:
        _, overridden = _pytest_auto.decide(**asked, env=None)
    return on, source, overridden


def _start_auto(config: pytest.Config, source: str) -> None:
    from portsafe._auto import switch as _auto  # lazily: runs that do not ask never import it

    run = _AutoRun(source=source, fixtures_before=ports_handed_out())
    if not _auto.enabled():  # with PORTSAFE_AUTO=1 the start-up hook has done it
        _auto.enable(source="pytest")  # also sets PORTSAFE_AUTO=1 for child processes
        run.enabled_here = True
    config.stash[_AUTO_RUN] = run
    # Registered after every entry-point plugin, so these definitions win over
    # pytest-asyncio's; a conftest's own definitions still win over both.
    config.pluginmanager.register(asyncio_port_fixtures(), "portsafe-asyncio-ports")


# trylast: every other plugin and conftest has declared its markers by then.
@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers, report fixture-name clashes, start auto mode if asked."""
    _register_markers(config)
    _check_fixture_names(config)
    on, source, overridden = _auto_requested(config)
    if on:
        _start_auto(config, source)
    elif overridden:
        config.stash[_OVERRIDDEN] = overridden


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo what auto mode changed in this process (in-process runs leave nothing)."""
    run = config.stash.get(_AUTO_RUN, None)
    if run is None:
        return
    del config.stash[_AUTO_RUN]
    if run.enabled_here:  # disable() also gives PORTSAFE_AUTO back its old value
        from portsafe._auto import switch as _auto

        _auto.disable()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say that auto mode is on, and whether child processes get it too."""
    run = config.stash.get(_AUTO_RUN, None)
    if run is None:
        overridden = config.stash.get(_OVERRIDDEN, "")
        if overridden:
            return [f"portsafe: auto mode off: {_pytest_auto.OFF_SOURCE} overrides {overridden}"]
        return []
    from portsafe._auto import switch as _auto

    return _pytest_auto.header_lines(run.source, hook_installed=_auto.hook_installed())


def _own_stats(run: _AutoRun) -> dict[str, object]:
    from portsafe._auto import switch as _auto

    return {**_auto.stats(), "fixtures": ports_handed_out() - run.fixtures_before}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker, hand this process's auto-mode figures to the controller."""
    config = session.config
    run = config.stash.get(_AUTO_RUN, None)
    if run is not None and _is_xdist_worker(config):
        config.workeroutput[_WORKER_OUTPUT_KEY] = _own_stats(run)  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without xdist
def pytest_testnodedown(node: object, error: object) -> None:
    """Collect a finished xdist worker's auto-mode figures."""
    config = getattr(node, "config", None)
    output = getattr(node, "workeroutput", None) or {}
    stats = output.get(_WORKER_OUTPUT_KEY) if isinstance(output, dict) else None
    if isinstance(config, pytest.Config) and isinstance(stats, dict):
        run = config.stash.get(_AUTO_RUN, None)
        if run is not None:
            run.worker_stats.append(stats)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Report auto mode: ports reserved (summed over xdist workers) and every fallback."""
    run = config.stash.get(_AUTO_RUN, None)
    if run is None or _is_xdist_worker(config):
        return
    merged = _pytest_auto.merge_stats([_own_stats(run), *run.worker_stats])
    lines = _pytest_auto.summary_lines(run.source, merged, workers=len(run.worker_stats))
    fell_back = bool(merged["fallbacks"])
    terminalreporter.write_sep("=", "portsafe auto mode", yellow=fell_back, green=not fell_back)
    for line in lines:
        terminalreporter.write_line(line)


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
        skip_at_item(reason)


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
        skip_at_item(str(exc))


# pluggy < 1.1 has no wrapper=True. Stay importable there (this plugin loads in every
# pytest run): requires_internet still skips unless opted in; only the conversion of
# transient errors into skips is missing.
with contextlib.suppress(TypeError):
    pytest_runtest_call = pytest.hookimpl(wrapper=True)(_runtest_call)


# -- fixtures: thin wrappers -------------------------------------------------------------


@pytest.fixture
def reserved_tcp_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 reserved for this test; released at teardown.

    No other portsafe user on the machine (xdist worker, other pytest run) gets it
    while the test runs, and the kernel will not hand it out on its own. Bind it
    yourself or pass it to a server (``--port``).
    """
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_STREAM)


@pytest.fixture
def reserved_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 reserved for this test; released at teardown."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_DGRAM)


@pytest.fixture
def reserved_port_factory() -> Iterator[PortFactory]:
    """Reserve any number of ports: ``reserved_port_factory(**reserve_port options) -> int``.

    Options are ``host``, ``family``, ``socktype``, ``ports`` and ``exclude``, as for
    ``portsafe.reserve_port``. Every port it gave is released at teardown.
    """
    with _new_factory() as factory:
        yield factory


@pytest.fixture(scope="session")
def reserved_tcp_port_session() -> Iterator[int]:
    """A TCP port on 127.0.0.1 reserved until the session (xdist: the worker) ends."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_STREAM)


@pytest.fixture(scope="session")
def reserved_udp_port_session() -> Iterator[int]:
    """A UDP port on 127.0.0.1 reserved until the session (xdist: the worker) ends."""
    with _new_factory() as take:
        yield take(socktype=socket.SOCK_DGRAM)


@pytest.fixture(scope="session")
def reserved_port_factory_session() -> Iterator[PortFactory]:
    """Like ``reserved_port_factory``, but ports are held until the session ends."""
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
