"""Auto mode and the known port pickers, each against the real package, in one process."""

from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import portsafe
from portsafe._auto import switch as _auto
from portsafe._locking import files as _locks
from portsafe._platform import NAMES

ephemeral_port_reserve = pytest.importorskip("ephemeral_port_reserve")
port_for = pytest.importorskip("port_for")
portpicker = pytest.importorskip("portpicker")


@pytest.fixture
def auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Auto mode on, a private lock directory, no port server."""
    if not NAMES:  # names have no lock directory
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("PORTSERVER_ADDRESS", raising=False)
    _auto.enable()
    try:
        yield
    finally:
        _auto.disable()


def reserved_and_leased(port: int) -> bool:
    low, high = portsafe.ephemeral_port_range()
    return not low <= port <= high and _locks.table().holds(port)


def strict_bind(port: int, kind: int = socket.SOCK_STREAM) -> None:
    """A server without SO_REUSEADDR binds the number (no TIME_WAIT, nothing bound)."""
    with socket.socket(socket.AF_INET, kind) as server:
        server.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            server.listen()


class TestPatchedPickers:
    def test_portpicker(self, auto: None) -> None:
        """pick_unused_port (and PickUnusedPort) hand out leased reserved ports."""
        ports = [portpicker.pick_unused_port(), portpicker.PickUnusedPort()]
        assert len(set(ports)) == 2
        for port in ports:
            assert reserved_and_leased(port)
            strict_bind(port)
            strict_bind(port, socket.SOCK_DGRAM)

    def test_portpicker_return_port_ends_the_lease(self, auto: None) -> None:
        """return_port gives a leased port back at once."""
        port = portpicker.pick_unused_port()
        portpicker.return_port(port)
        assert not _locks.table().holds(port)

    def test_portpicker_with_a_port_server_is_left_alone(
            self, auto: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """With PORTSERVER_ADDRESS set, portpicker asks the server as before."""
        monkeypatch.setenv("PORTSERVER_ADDRESS", "@portsafe-test-server")
        monkeypatch.setattr(portpicker, "get_port_from_port_server",
                            lambda address, pid=None: 4242)
        assert portpicker.pick_unused_port() == 4242
        assert _auto.stats()["reserved"] == 0

    def test_ephemeral_port_reserve_without_time_wait(self, auto: None) -> None:
        """reserve() gives a leased port that binds even without SO_REUSEADDR."""
        port = ephemeral_port_reserve.reserve()
        assert reserved_and_leased(port)
        strict_bind(port)

    def test_ephemeral_port_reserve_explicit_port_is_original(self, auto: None) -> None:
        """reserve(ip, port) with a port keeps the package's own behaviour."""
        with portsafe.reserve_port() as r:
            assert ephemeral_port_reserve.reserve("127.0.0.1", r.port) == r.port

    def test_port_for(self, auto: None) -> None:
        """select_random, get_port(None) and get_port(range) give leased reserved ports."""
        for port in (port_for.select_random(), port_for.get_port(None),
                     port_for.api.select_random()):
            assert reserved_and_leased(port)
            strict_bind(port)
        with portsafe.reserve_ports(3, contiguous=True) as group:
            low, high = group.ports[0], group.ports[-1]
        port = port_for.get_port((low, high))
        assert low <= port <= high
        assert _locks.table().holds(port)

    def test_port_for_store(self, auto: None, tmp_path: Path) -> None:
        """PortStore.bind_port picks through the patched select_random."""
        store = port_for.PortStore(str(tmp_path / "ports.conf"))
        port = store.bind_port("app")
        assert reserved_and_leased(port)

    def test_patched_on_import(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A picker imported after enable() is patched by the import watcher."""
        if not NAMES:  # names have no lock directory
            monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path / "locks"))
        monkeypatch.delitem(sys.modules, "ephemeral_port_reserve")
        _auto.enable()
        try:
            fresh = importlib.import_module("ephemeral_port_reserve")
            assert fresh is not ephemeral_port_reserve
            assert hasattr(fresh.reserve, "__wrapped__")
            assert type(fresh.__loader__).__name__ == "SourceFileLoader"
        finally:
            _auto.disable()
        assert not hasattr(fresh.reserve, "__wrapped__")

    def test_disable_restores_the_originals(self, auto: None) -> None:
        """disable() puts each package's own functions back."""
        assert hasattr(portpicker.pick_unused_port, "__wrapped__")
        _auto.disable()
        for function in (portpicker.pick_unused_port, portpicker.return_port,
                         ephemeral_port_reserve.reserve, port_for.select_random,
                         port_for.api.select_random):
            assert not hasattr(function, "__wrapped__")

    @pytest.mark.usefixtures("no_reservations")
    def test_fallback_to_the_original(self, auto: None) -> None:
        """No reservation possible: the package's own pick, counted as a fallback."""
        assert 1 <= ephemeral_port_reserve.reserve() <= 65535
        assert 1 <= port_for.select_random() <= 65535
        assert _auto.stats()["fallbacks"] >= 2


class TestCoveredWithoutCode:
    """Pickers that bind port 0 and close: the socket patches alone cover them."""

    def test_aiohttp_unused_port(self, auto: None) -> None:
        """aiohttp.test_utils.unused_port (behind the aiohttp_unused_port fixture)."""
        test_utils = pytest.importorskip("aiohttp.test_utils")
        port = test_utils.unused_port()
        assert reserved_and_leased(port)
        strict_bind(port)

    def test_anyio_factories(self, auto: None) -> None:
        """anyio's FreePortFactory (behind free_tcp_port/free_udp_port): no repeats."""
        plugin = pytest.importorskip("anyio.pytest_plugin")
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            factory = plugin.FreePortFactory(kind)
            ports = [factory() for _ in range(10)]
            assert len(set(ports)) == 10
            for port in ports:
                assert reserved_and_leased(port)
            strict_bind(ports[0], kind)
