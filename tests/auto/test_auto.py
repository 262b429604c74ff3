"""Auto mode in one process: the switch, what a bind to port 0 gets, leases, fallbacks."""

from __future__ import annotations

import _socket
import asyncio
import errno
import gc
import http.server
import logging
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support import CHILDREN

import portsafe
from portsafe._auto import harvest as _autoharvest
from portsafe._auto import sockets as _autosock
from portsafe._auto import switch as _auto
from portsafe._core import probe as _probe
from portsafe._locking import files as _locks
from portsafe._platform import NAMES

needs_ipv6 = pytest.mark.skipif(not _probe.ipv6_available(), reason="no IPv6 on this host")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


@pytest.fixture
def auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Auto mode on for one test, with a private lock directory; off again after."""
    if not NAMES:  # names have no lock directory
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("PORTSAFE_AUTO_LEASE", raising=False)
    monkeypatch.delenv("PORTSAFE_AUTO_MAX_LEASES", raising=False)
    _auto.enable()
    try:
        yield
    finally:
        _auto.disable()


def outside_ephemeral(port: int) -> bool:
    low, high = portsafe.ephemeral_port_range()
    return not low <= port <= high


def held_here(port: int) -> bool:
    return _locks.table().holds(port)


def leased_ports() -> list[int]:
    return [reservation.port for _, reservation in _autosock._leases]


def pooled_ports() -> list[int]:
    return [reservation.port for reservation in _autoharvest._pool]


def pick(host: str = "127.0.0.1", family: int = socket.AF_INET,
         kind: int = socket.SOCK_STREAM) -> int:
    """The bind-close picker of countless conftests."""
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


class TestSwitch:
    def test_off_means_no_patch(self) -> None:
        """Without enable() (and without PORTSAFE_AUTO) socket.socket is untouched."""
        assert not _auto.enabled()
        assert socket.socket.bind is _socket.socket.bind
        assert "bind" not in socket.socket.__dict__

    def test_enable_is_idempotent_and_sets_the_variable(self, auto: None) -> None:
        """enable() twice patches once and exports PORTSAFE_AUTO=1 for children."""
        bind = socket.socket.bind
        _auto.enable()
        assert socket.socket.bind is bind
        assert _auto.enabled()
        assert os.environ["PORTSAFE_AUTO"] == "1"

    def test_disable_restores_everything(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """disable() puts socket.socket back, releases leases and restores the variable."""
        monkeypatch.delenv("PORTSAFE_AUTO", raising=False)
        _auto.enable()
        port = pick()
        assert held_here(port)
        _auto.disable()
        assert not held_here(port)
        assert socket.socket.bind is _socket.socket.bind
        assert "_real_close" in socket.socket.__dict__  # the original, not ours
        assert socket.socket._real_close.__module__ == "socket"
        assert "PORTSAFE_AUTO" not in os.environ
        assert _auto.stats()["reserved"] == 0

    def test_stats_shape(self, auto: None) -> None:
        """stats() is JSON-ready and counts reservations and leases."""
        pick()
        stats = _auto.stats()
        assert stats == {"reserved": 1, "fallbacks": 0, "fallback_reasons": [],
                         "leases_held": 1, "probes_leased": 0, "refused_by_lease": 0,
                         "uncovered": []}

    def test_hook_installed_is_a_bool(self) -> None:
        """hook_installed() answers for this interpreter without side effects."""
        assert _auto.hook_installed() in (True, False)


class TestInterception:
    def test_bind_close_picker_gets_a_reserved_port(self, auto: None) -> None:
        """The bind-close picker's port is outside the ephemeral range and stays held."""
        port = pick()
        assert outside_ephemeral(port)
        assert held_here(port)
        assert (port, os.getpid()) in _locks.holders()

    def test_later_bind_of_the_number_succeeds(self, auto: None) -> None:
        """The caller's own bind of the picked number works with and without SO_REUSEADDR."""
        for reuse in (False, True):
            port = pick()
            with socket.socket() as server:
                if reuse:
                    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind(("127.0.0.1", port))
                server.listen()

    def test_udp_and_wildcard(self, auto: None) -> None:
        """UDP sockets and the wildcard address are intercepted too."""
        port = pick("", socket.AF_INET, socket.SOCK_DGRAM)
        assert outside_ephemeral(port)
        assert held_here(port)

    @needs_ipv6
    def test_ipv6_with_flowinfo_and_scope(self, auto: None) -> None:
        """AF_INET6 four-tuples keep their flowinfo and scope id."""
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0, 0, 0))
            port = sock.getsockname()[1]
        assert outside_ephemeral(port)

    def test_explicit_port_untouched(self, auto: None) -> None:
        """A bind to an explicit port is the kernel's, reserved or not."""
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second, pytest.raises(OSError) as info:
                second.bind(("127.0.0.1", port))
            assert info.value.errno == errno.EADDRINUSE
        assert _auto.stats()["reserved"] == 1

    def test_unix_and_connect_only_untouched(self, auto: None, tmp_path: Path) -> None:
        """AF_UNIX binds and sockets that only connect reserve nothing."""
        with socket.socket(socket.AF_UNIX) as unix:
            unix.bind(str(tmp_path / "sock"))
        with socket.create_server(("127.0.0.1", 0)) as server:
            reserved = _auto.stats()["reserved"]
            with socket.create_connection(server.getsockname()) as client:
                assert not outside_ephemeral(client.getsockname()[1])
            assert _auto.stats()["reserved"] == reserved

    def test_nonlocal_address_fails_as_without_portsafe(self, auto: None) -> None:
        """A bind to an address that is not this machine's fails with the kernel's error."""
        with socket.socket() as sock, pytest.raises(OSError) as info:
            sock.bind(("192.0.2.1", 0))  # TEST-NET-1: never local; bind sends nothing
        assert info.value.errno == errno.EADDRNOTAVAIL
        assert _auto.stats()["fallbacks"] == 0

    def test_raw_types_untouched(self, auto: None) -> None:
        """Only TCP/UDP: a SOCK_SEQPACKET unix pair and raw ints pass straight through."""
        a, b = socket.socketpair()
        a.close()
        b.close()
        assert _auto.stats()["reserved"] == 0


class TestLifetime:
    def test_used_socket_releases_at_close(self, auto: None) -> None:
        """A socket that listened gives its reservation back when closed."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            assert held_here(port)
            sock.listen()
        assert not held_here(port)
        assert _auto.stats()["leases_held"] == 0

    def test_connected_udp_releases_at_close(self, auto: None) -> None:
        """Sending counts as use: a UDP socket that sent releases at close."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sink.bind(("127.0.0.1", 0))
            sender.bind(("127.0.0.1", 0))
            port = sender.getsockname()[1]
            sender.sendto(b"x", sink.getsockname())
        assert not held_here(port)

    def test_makefile_keeps_it_until_the_last_reference(self, auto: None) -> None:
        """close() with a makefile() open defers the release to the real close."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        stream = sock.makefile("rb")
        sock.close()
        assert held_here(port)
        stream.close()
        assert not held_here(port)

    def test_detach_leases(self, auto: None) -> None:
        """detach() hands the descriptor elsewhere: the port is leased."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        os.close(sock.detach())
        assert held_here(port)
        assert _auto.stats()["leases_held"] == 1

    def test_garbage_collected_socket(self, auto: None) -> None:
        """A socket dropped without close: unused ones lease, used ones release."""
        unused = socket.socket()
        unused.bind(("127.0.0.1", 0))
        used = socket.socket()
        used.bind(("127.0.0.1", 0))
        used.listen()
        ports = unused.getsockname()[1], used.getsockname()[1]
        with pytest.warns(ResourceWarning):  # noqa: PT031 - the warning comes from the GC
            del unused, used
            gc.collect()
        assert _auto.stats()["leases_held"] == 1
        assert held_here(ports[0])
        assert not held_here(ports[1])

    def test_lease_expires_lazily(self, auto: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """PORTSAFE_AUTO_LEASE=0: the lease ends at the next call that looks, and its
        reservation waits in the pool for this process's next pick."""
        monkeypatch.setenv("PORTSAFE_AUTO_LEASE", "0")
        port = pick()
        assert leased_ports() == [port]  # nobody looked yet: no thread expires it
        assert _auto.stats()["leases_held"] == 0
        assert pooled_ports() == [port]

    def test_cap_ends_the_oldest_lease_first(self, auto: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        """PORTSAFE_AUTO_MAX_LEASES=2: a third lease pushes the oldest out."""
        monkeypatch.setenv("PORTSAFE_AUTO_MAX_LEASES", "2")
        first, second, third = pick(), pick(), pick()
        assert leased_ports() == [second, third]
        assert pooled_ports() == [first]
        assert _auto.stats()["leases_held"] == 2

    def test_pool_is_bounded(self, auto: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """Ended leases beyond the pool's size are released for good, oldest first."""
        monkeypatch.setenv("PORTSAFE_AUTO_MAX_LEASES", "1")
        ports = [pick() for _ in range(3 * _autoharvest.MAX_POOL)]
        assert len(pooled_ports()) <= _autoharvest.MAX_POOL
        held = {port for port in set(ports) if held_here(port)}
        assert len(held) <= _autoharvest.MAX_POOL + 1

    def test_pooled_port_is_reused_only_when_free(self, auto: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """A pooled port that a server now uses is dropped, never handed out."""
        monkeypatch.setenv("PORTSAFE_AUTO_LEASE", "0")
        port = pick()
        _auto.stats()
        assert pooled_ports() == [port]
        with socket.create_server(("127.0.0.1", port)):  # the picker's server, at last
            got = {pick() for _ in range(2 * _autoharvest.FRESH_EVERY)}
            assert port not in got
        assert port not in pooled_ports()

    def test_bad_settings_never_fail_a_close(self, auto: None, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
        """A bad PORTSAFE_AUTO_LEASE is logged; the close works and the default applies."""
        monkeypatch.setenv("PORTSAFE_AUTO_LEASE", "soon")
        with caplog.at_level(logging.WARNING, logger="portsafe.auto"):
            port = pick()
        assert held_here(port)
        assert "PORTSAFE_AUTO_LEASE='soon'" in caplog.text
        assert "PORTSAFE_AUTO_LEASE='soon'" in str(_auto.stats()["fallback_reasons"])

    def test_fork_child_forgets(self, auto: None) -> None:
        """A fork child holds nothing of its parent's, and says so in stats()."""
        pick()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            os.write(write, str(_auto.stats()["leases_held"]).encode())
            os._exit(0)
        os.close(write)
        assert os.read(read, 10) == b"0"
        os.close(read)
        os.waitpid(pid, 0)


class TestFallback:
    @pytest.mark.usefixtures("no_reservations")
    def test_no_reservation_possible(self, auto: None,
                                     caplog: pytest.LogCaptureFixture) -> None:
        """Nothing can be reserved (names refused, or a lock directory that cannot be
        made): the kernel picks, counted and logged."""
        with caplog.at_level(logging.DEBUG, logger="portsafe.auto"):
            port = pick()
            pick()
        assert not outside_ephemeral(port)
        stats = _auto.stats()
        assert stats["fallbacks"] == 2
        assert len(stats["fallback_reasons"]) == 1  # type: ignore[arg-type]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "kernel picked" in warnings[0].getMessage()

    def test_exhausted_range(self, auto: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """PORTSAFE_RANGE of one port that is taken: the kernel's pick, not an error."""
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))  # reserved and held while open
            port = squatter.getsockname()[1]
            monkeypatch.setenv("PORTSAFE_RANGE", str(port))
            got = pick()
        assert got != port
        assert _auto.stats()["fallbacks"] == 1

    def test_under_w_error(self, tmp_path: Path) -> None:
        """python -W error: a fallback still binds, and warnings never fail a bind.
        Nothing can be reserved: on Linux a seccomp filter refuses the names (as a
        sandbox may), elsewhere the lock directory cannot be made."""
        code = ("import socket; from portsafe._auto import switch as _auto; _auto.enable();"
                "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.close();"
                "print(_auto.stats()['fallbacks'])")
        env = dict(os.environ)
        env.pop("PORTSAFE_LOCK_DIR", None)
        prefix: list[str] = []
        if NAMES:
            prefix = [sys.executable, str(CHILDREN / "seccomp.py")]
            if subprocess.run([*prefix, sys.executable, "-c", "pass"], check=False).returncode:
                pytest.skip("seccomp filters cannot be installed here")
        else:
            blocker = tmp_path / "file"
            blocker.write_text("")
            env["PORTSAFE_LOCK_DIR"] = str(blocker / "locks")
        done = subprocess.run([*prefix, sys.executable, "-W", "error", "-c", code], env=env,
                              capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "1"


class TestReuseOptions:
    """With SO_REUSEADDR set, the port must still be one the kernel's bind(0) could give."""

    @staticmethod
    def only(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
        monkeypatch.setenv("PORTSAFE_RANGE", str(port))

    def reuse_pick(self, kind: int = socket.SOCK_STREAM) -> int:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port

    def free_outside(self) -> int:
        with portsafe.reserve_port() as r:
            return r.port

    def test_not_a_time_wait_port(self, auto: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """A port with a TIME_WAIT connection is never handed out to a reuse binder."""
        _auto.disable()
        port = self.free_outside()
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            client = socket.create_connection(("127.0.0.1", port))
            conn, _ = server.accept()
            conn.close()  # the server side closes first: TIME_WAIT on the server's port
            client.close()
        _auto.enable()
        self.only(monkeypatch, port)
        assert self.reuse_pick() != port
        assert _auto.stats()["fallbacks"] == 1

    def test_not_a_reuse_listener_port(self, auto: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """A port where a non-portsafe SO_REUSEADDR socket is bound is passed over."""
        _auto.disable()
        port = self.free_outside()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
            _auto.enable()
            self.only(monkeypatch, port)
            assert self.reuse_pick(socket.SOCK_DGRAM) != port


    def test_option_stays_set(self, auto: None) -> None:
        """The caller's SO_REUSEADDR is on after the bind, and works as the kernel's."""
        for _ in range(40):  # past the fast path's warm-up
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
                with socket.socket() as twin:  # both set the option, neither listens
                    twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    twin.bind(sock.getsockname())

    @linux_only
    def test_fast_path_skips_time_wait(self, auto: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """Ports auto mode already knows are re-checked: a TIME_WAIT one is never given."""
        with portsafe.reserve_ports(24, contiguous=True) as group:
            ports = group.ports
        monkeypatch.setenv("PORTSAFE_RANGE", f"{ports[0]}-{ports[-1]}")
        monkeypatch.setenv("PORTSAFE_AUTO_MAX_LEASES", "1")
        for _ in range(80):  # ports of the range go through the fast path's pool
            pick()
        pooled = [port for port in pooled_ports() if port in ports]
        assert pooled
        waiting = pooled[0]
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", waiting))
            server.listen()
            client = socket.create_connection(("127.0.0.1", waiting))
            conn, _ = server.accept()
            conn.close()  # the server side closes first: TIME_WAIT on the server's port
            client.close()
        got = {self.reuse_pick() for _ in range(200)}
        assert waiting not in got
        assert waiting not in pooled_ports()  # tried, found in use, dropped
        assert got <= set(ports) | set(range(*portsafe.ephemeral_port_range()))


class TestLibraries:
    """Everything built on socket.socket is covered: create_server, asyncio, socketserver."""

    def test_create_server(self, auto: None) -> None:
        """socket.create_server(port 0) listens on a reserved port."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            assert outside_ephemeral(port)
            assert held_here(port)
        assert not held_here(port)

    def test_asyncio_server_and_datagram(self, auto: None) -> None:
        """asyncio's create_server and create_datagram_endpoint get reserved ports."""

        async def main() -> tuple[int, int]:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            ports = server.sockets[0].getsockname()[1], transport.get_extra_info(
                "sockname")[1]
            transport.close()
            server.close()
            await server.wait_closed()
            return ports

        for port in asyncio.run(main()):
            assert outside_ephemeral(port)

    def test_socketserver_and_http_server(self, auto: None) -> None:
        """socketserver.TCPServer and http.server on port 0 serve on reserved ports."""
        with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as tcp:
            assert outside_ephemeral(tcp.server_address[1])
        server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            port = server.server_address[1]
            assert outside_ephemeral(port)
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert client.recv(100).startswith(b"HTTP/1.0 501")
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
