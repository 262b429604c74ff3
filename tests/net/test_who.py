"""who_holds() and explain_address_in_use(): name the process behind a port."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from tests.support import netns as _netns

import portsafe
from portsafe import AddressInUseError
from portsafe import _platform as backend
from portsafe._core.probe import ipv6_available
from portsafe._net import who as _who
from portsafe._net.handoff import listen, spawn
from portsafe._net.who import Holder, explain_address_in_use, who_holds

if TYPE_CHECKING:
    from pathlib import Path

needs_proc_net = pytest.mark.skipif(
    not os.path.exists("/proc/net/tcp") or not backend.PROC,
    reason="who_holds reads Linux's /proc/net (not in the run of the macOS code on Linux)")

# A child that listens on a port of its own and reports it, then waits for stdin to close.
CHILD_LISTENER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""

# A child that listens on port argv[1] (with SO_REUSEPORT if argv[2] is "1"), says "up",
# then waits for stdin to close.
CHILD_ON_PORT = """
import socket, sys
server = socket.socket()
if sys.argv[2] == "1":
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("up", flush=True)
sys.stdin.read()
"""

# Run as another user: explain a bind failure on port argv[1], print the message.
EXPLAIN = """
import socket, sys, portsafe
port = int(sys.argv[1])
with socket.socket() as sock:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        print(portsafe.explain_address_in_use(exc, port))
"""
NOBODY = 65534
def _hex_address(address: str) -> str:
    """Encode an address the way /proc/net/tcp prints it (host-order 32-bit words)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{word:08X}" for word in words)


def _table_line(address: str, port: int, state: int, inode: int) -> str:
    return (
        f"   0: {_hex_address(address)}:{port:04X} {_hex_address(address)}:0000 {state:02X} "
        f"00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000 100 0 0 10 0"
    )


@needs_proc_net
class TestWhoHolds:
    def test_finds_own_listener(self) -> None:
        """This process's listener is found with its pid, command, state and address."""
        with listen() as sock:
            port = sock.getsockname()[1]
            holders = who_holds(port)
        mine = [h for h in holders if h.pid == os.getpid()]
        assert mine
        holder = mine[0]
        assert holder.state == "LISTEN"
        assert (holder.host, holder.port) == ("127.0.0.1", port)
        assert holder.family == socket.AF_INET
        assert holder.socktype == socket.SOCK_STREAM
        assert holder.command is not None
        assert "python" in holder.command.lower() or "pytest" in holder.command

    def test_finds_subprocess_listener_by_pid(self) -> None:
        """A child's own listener is found under the child's pid and command line."""
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_LISTENER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            holders = who_holds(port)
        finally:
            proc.communicate(timeout=60)
        assert [h.pid for h in holders if h.state == "LISTEN"] == [proc.pid]
        assert holders[0].command is not None
        assert "create_server" in holders[0].command

    def test_inherited_socket_listed_per_process(self) -> None:
        """A socket passed with spawn() shows up under both the parent and the child."""
        with listen() as sock:
            port = sock.getsockname()[1]
            proc = spawn([sys.executable, "-c", "import sys; sys.stdin.read()"], [sock],
                         stdin=subprocess.PIPE)
            try:
                pids = {h.pid for h in who_holds(port)}
            finally:
                proc.communicate(timeout=60)
        assert {os.getpid(), proc.pid} <= pids

    def test_accepted_connection_listed_after_listener(self) -> None:
        """Connections on the port are listed too, after the listeners."""
        with listen() as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                conn, _ = server.accept()
                with conn:
                    states = [h.state for h in who_holds(port) if h.pid == os.getpid()]
        assert states == ["LISTEN", "ESTABLISHED"]

    @pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
    def test_ipv6_listener(self) -> None:
        """An IPv6 listener is decoded from /proc/net/tcp6."""
        with listen("::1") as sock:
            port = sock.getsockname()[1]
            holders = [h for h in who_holds(port) if h.pid == os.getpid()]
        assert [(h.host, h.family) for h in holders] == [("::1", socket.AF_INET6)]

    def test_udp(self) -> None:
        """UDP sockets are found with socktype=SOCK_DGRAM and state UNCONN."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            assert not [h for h in who_holds(port) if h.pid == os.getpid()]
            udp = [h for h in who_holds(port, socktype=socket.SOCK_DGRAM)
                   if h.pid == os.getpid()]
            both = [h for h in who_holds(port, socktype=0) if h.pid == os.getpid()]
        assert [(h.state, h.socktype) for h in udp] == [("UNCONN", socket.SOCK_DGRAM)]
        assert both == udp

    def test_free_port_has_no_holders(self) -> None:
        """A port nobody uses gives an empty list."""
        with listen() as sock:
            port = sock.getsockname()[1]
        assert who_holds(port) == []


class TestWhoHoldsWithoutProc:
    def test_no_proc_means_empty(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without /proc (macOS, Windows) the answer is empty, never an error."""
        monkeypatch.setattr(_who, "_PROC", str(tmp_path / "nowhere"))
        assert who_holds(8080) == []

    @pytest.mark.skipif(not backend.PROC, reason="the lock-file backend reads no /proc")
    def test_uninspectable_process_has_no_pid(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A socket whose process cannot be seen is listed with pid None; junk is skipped."""
        (tmp_path / "net").mkdir()
        lines = [
            "  sl  local_address rem_address   st tx_queue ...",
            _table_line("127.0.0.1", 8080, 0x0A, 4242),
            "   1: garbage",
            _table_line("10.1.2.3", 8081, 0x0A, 4243),
        ]
        (tmp_path / "net" / "tcp").write_text("\n".join(lines) + "\n")
        (tmp_path / "net" / "tcp6").write_text(
            "header\n" + _table_line("::ffff:127.0.0.1", 8080, 0x06, 0) + "\n"
        )
        monkeypatch.setattr(_who, "_PROC", str(tmp_path))
        holders = who_holds(8080)
        assert holders == [
            Holder(None, None, "LISTEN", "127.0.0.1", 8080, socket.AF_INET, socket.SOCK_STREAM),
            Holder(None, None, "TIME_WAIT", "::ffff:127.0.0.1", 8080, socket.AF_INET6,
                   socket.SOCK_STREAM),
        ]
        message = str(explain_address_in_use(OSError(errno.EADDRINUSE, "in use"), 8080))
        assert "cannot inspect" in message
        # The table's uid column (1000 here) names the owner, unless it is this user.
        if os.geteuid() != 1000:
            assert "another user (uid 1000)" in message

    @pytest.mark.skipif(not _netns.available(), reason="needs unshare --net")
    def test_the_lock_file_backend_reads_no_proc(self) -> None:
        """Portsafe's run of the macOS code on Linux (the test-only channel) reads no
        /proc, as macOS has none: a listener there has no holders, and the explanation
        says the OS did not say."""
        code = ("import json, socket, portsafe\n"
                "with portsafe.listen() as held, socket.socket() as sock:\n"
                "    port = held.getsockname()[1]\n"
                "    try:\n"
                "        sock.bind(('127.0.0.1', port))\n"
                "    except OSError as exc:\n"
                "        print(json.dumps([len(portsafe.who_holds(port)),\n"
                "                          str(portsafe.explain_address_in_use(exc, port))]))\n")
        done = subprocess.run([*_netns.PREFIX, sys.executable, "-c", code],
                              env=dict(os.environ, **{backend.SELFTEST: "1"}),
                              capture_output=True, text=True, timeout=60, check=True)
        count, message = json.loads(done.stdout)
        assert count == 0
        assert "the OS did not say by whom" in message

    def test_bad_arguments(self) -> None:
        """Wrong types raise TypeError; bad values InvalidSettingError."""
        with pytest.raises(TypeError, match="'80'"):
            who_holds("80")  # type: ignore[arg-type]
        with pytest.raises(portsafe.InvalidSettingError, match="70000"):
            who_holds(70000)
        with pytest.raises(portsafe.InvalidSettingError, match="socktype"):
            who_holds(80, socktype=socket.SOCK_RAW)


class TestExplainAddressInUse:
    def test_other_errors_pass_through(self) -> None:
        """An error that is not EADDRINUSE is returned unchanged."""
        exc = OSError(errno.EACCES, "Permission denied")
        assert explain_address_in_use(exc, 80) is exc

    def test_type_checked(self) -> None:
        """A non-OSError is a TypeError."""
        with pytest.raises(TypeError, match="OSError"):
            explain_address_in_use(ValueError("x"), 80)  # type: ignore[arg-type]

    def test_real_bind_failure_names_this_process(self) -> None:
        """A real EADDRINUSE becomes an AddressInUseError naming the holder and advice;
        the holder being this very process, it is told to close its socket, never to
        kill itself."""
        with listen() as held, socket.socket() as sock:
            port = held.getsockname()[1]
            with pytest.raises(OSError) as info:
                sock.bind(("127.0.0.1", port))
            explained = explain_address_in_use(info.value, port)
        assert isinstance(explained, AddressInUseError)
        assert isinstance(explained, portsafe.PortsafeError)
        assert explained.errno == errno.EADDRINUSE
        assert explained.port == port
        assert "reserve_port" in str(explained)
        if os.path.exists("/proc/net/tcp") and backend.PROC:
            assert f"this very process (pid {os.getpid()}) on 127.0.0.1:{port}" in str(
                explained)
            assert "close that socket" in str(explained)
            assert "kill" not in str(explained)
            assert any(h.pid == os.getpid() for h in explained.holders)

    @needs_proc_net
    def test_time_wait_only(self) -> None:
        """A port held only by TIME_WAIT connections says so and suggests SO_REUSEADDR."""
        server = listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn, _ = server.accept()
        conn.close()  # the side that closes first keeps TIME_WAIT, on the server's port
        client.close()
        server.close()
        deadline = time.monotonic() + 30
        while {h.state for h in who_holds(port)} != {"TIME_WAIT"}:
            if time.monotonic() > deadline:
                pytest.skip(f"no TIME_WAIT appeared: {who_holds(port)}")
            time.sleep(0.01)
        with socket.socket() as sock, pytest.raises(OSError) as info:
            sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR
        message = str(explain_address_in_use(info.value, port))
        assert "TIME_WAIT" in message
        assert "SO_REUSEADDR" in message
        # `portsafe who` tells a closing connection from an uninspectable process.
        assert [h.describe() for h in who_holds(port)] == ["TIME_WAIT (no process)"]
        done = subprocess.run([sys.executable, "-m", "portsafe", "who", str(port)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert "TIME_WAIT (no process" in done.stdout
        assert "cannot inspect" not in done.stdout

    def test_time_wait_is_not_an_unknown_process(self) -> None:
        """Holder.describe(): TIME_WAIT without a pid is "no process", another state is a
        process portsafe cannot inspect."""
        def holder(state: str) -> Holder:
            return Holder(None, None, state, "127.0.0.1", 80, socket.AF_INET,
                          socket.SOCK_STREAM)

        assert holder("TIME_WAIT").describe() == "TIME_WAIT (no process)"
        assert "cannot inspect" in holder("LISTEN").describe()

    def test_pickles(self) -> None:
        """AddressInUseError survives pickling with its holders."""
        holder = Holder(1, "x", "LISTEN", "127.0.0.1", 80, socket.AF_INET, socket.SOCK_STREAM)
        exc = AddressInUseError("port 80 is held", port=80, holders=[holder])
        copy = pickle.loads(pickle.dumps(exc))
        assert (str(copy), copy.port, copy.holders, copy.errno) == (
            "port 80 is held", 80, [holder], errno.EADDRINUSE
        )


def _child_on(port: int, reuse: bool = False) -> subprocess.Popen[str]:
    """A child listening on *port*, once it says it is."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD_ON_PORT, str(port), str(int(reuse))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "up":
        proc.kill()
        proc.wait(timeout=60)
        pytest.fail("the child could not listen on the port")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=60)


@needs_proc_net
class TestExplainWho:
    """Who the explanation names: this process, another, another user, the reservation."""

    def test_this_process_and_another_share_the_port(self) -> None:
        """This process and a child listen with SO_REUSEPORT: only the child is to be
        stopped (kill its pid), and this process is told to close its own socket."""
        with socket.socket() as mine:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            mine.bind(("127.0.0.1", 0))
            mine.listen()
            port = mine.getsockname()[1]
            child = _child_on(port, reuse=True)
            try:
                with socket.socket() as sock, pytest.raises(OSError) as info:
                    sock.bind(("127.0.0.1", port))
                message = str(explain_address_in_use(info.value, port))
            finally:
                _stop(child)
        assert f"this very process (pid {os.getpid()})" in message
        assert f"pid {child.pid} (" in message
        assert f"close this process's socket and stop it (kill {child.pid})" in message
        assert f"kill {os.getpid()}" not in message

    @pytest.mark.names
    def test_a_reserved_port_taken_by_another_process(self) -> None:
        """A port reserved by this process and bound by a child that did not reserve it:
        the explanation names both, and the child is the one to stop."""
        with portsafe.reserve_port() as reservation:
            child = _child_on(reservation.port)
            try:
                with socket.socket() as sock, pytest.raises(OSError) as info:
                    sock.bind(("127.0.0.1", reservation.port))
                message = str(explain_address_in_use(info.value, reservation.port))
            finally:
                _stop(child)
        assert f"held by pid {child.pid} (" in message
        assert "while portsafe reserved it for this very process" in message
        assert f"stop it (kill {child.pid})" in message

    @pytest.mark.names
    def test_the_reservation_of_the_sockets_own_process_is_not_repeated(self) -> None:
        """A port reserved and bound by the same process: named once, as its holder."""
        with portsafe.reserve_port() as reservation, socket.socket() as held:
            held.bind(("127.0.0.1", reservation.port))
            held.listen()
            with socket.socket() as sock, pytest.raises(OSError) as info:
                sock.bind(("127.0.0.1", reservation.port))
            message = str(explain_address_in_use(info.value, reservation.port))
        assert "this very process" in message
        assert "reserved it for" not in message

    @pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0
                        or shutil.which("setpriv") is None,
                        reason="needs root and setpriv to run a reader as another user")
    def test_a_reader_of_another_user_names_the_uid(self) -> None:
        """Read as uid 65534, root's listener cannot be inspected: the explanation names
        its owner, uid 0, and says root could see which process it is."""
        with listen() as held:
            port = held.getsockname()[1]
            done = subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 sys.executable, "-c", EXPLAIN, str(port)],
                capture_output=True, text=True, timeout=60, check=False, cwd="/")
        if done.returncode != 0:
            pytest.skip(f"cannot run a reader as uid {NOBODY}: {done.stderr.strip()}")
        expected = (f"port {port} is held by a process of another user (uid 0) that "
                    f"portsafe cannot inspect (LISTEN on 127.0.0.1:{port};")
        assert expected in done.stdout
        assert "run as root to see which" in done.stdout
        assert "kill" not in done.stdout
