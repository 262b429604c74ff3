"""The portpicker-protocol port server (``portsafe serve``) and its client, request_port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.support.nobody import NOBODY, as_nobody
from tests.support.portserver import (
    held_by,
    name_is_free,
    path_name,
    portpicker_portserver,
    private_env,
    private_ports,
    server_name,
    serving,
    unlink_quietly,
    wait_for_line,
    wait_listening,
)

import portsafe
from portsafe import _platform as backend
from portsafe._core.serverclient import request_port
from portsafe._locking import files as _locks
from portsafe._locking import names
from portsafe._services import portserver as _server
from portsafe._services import requestloop
from portsafe._services.portserver import PortServer
from portsafe._system import process_identity, resolve_owner
from portsafe._unixsock import bind_unix, unix_address

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")
LINUX = sys.platform.startswith("linux")
ME = os.geteuid()


def _raw_request(address: str, payload: bytes, *, shut: bool = True) -> bytes:
    """Send raw bytes; return everything the server sent before closing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(unix_address(address))
        with contextlib.suppress(OSError):  # the server may close while we still write
            sock.sendall(payload)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                data += chunk
        return data


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _free_block(n: int) -> range:
    """n consecutive ports nobody holds right now."""
    with portsafe.reserve_ports(n, contiguous=True) as group:
        return range(group.ports[0], group.ports[0] + n)


@pytest.fixture
def served(tmp_path: Path):
    """``portsafe serve --verbose`` on 16 ports of its own (a private network namespace,
    reached through a path socket, which every namespace sees); its log in a file.
    Yields ``(address, process, ports, log)``."""
    address, log = path_name(), tmp_path / "serve.log"
    with (private_ports(16, tmp_path) as (prefix, env, ports),
          serving(["--range", f"{ports[0]}-{ports[-1]}"], env, log, address, prefix) as proc):
        yield address, proc, ports, log


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


class TestRequestPort:
    def test_no_server_gives_none(self) -> None:
        """With nothing listening, request_port returns None instead of raising."""
        assert request_port(server_name(), timeout=1.0) is None

    def test_path_without_socket_gives_none(self, tmp_path: Path) -> None:
        """A path that does not exist is 'no server', not an error."""
        assert request_port(str(tmp_path / "nothing.sock"), timeout=1.0) is None

    @pytest.mark.parametrize("reply", [b"", b"abc\n", b"0\n", b"70000\n", b"-5\n"])
    def test_bad_answers_give_none(self, reply: bytes) -> None:
        """Closed-without-answer, garbage, 0 and out-of-range answers all mean 'none'."""
        address = server_name()
        listener = bind_unix(address)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(64)
                conn.sendall(reply)

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            assert request_port(address, timeout=5.0) is None
        finally:
            thread.join()
            listener.close()

    def test_sends_own_pid(self) -> None:
        """The request is this process's pid in decimal and a newline."""
        address = server_name()
        listener = bind_unix(address)
        seen: list[bytes] = []

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                seen.append(conn.recv(64))
                conn.sendall(b"12345\n")

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            assert request_port(address) == 12345
        finally:
            thread.join()
            listener.close()
        assert seen == [b"%d\n" % os.getpid()]

    def test_argument_checks(self) -> None:
        """Wrong types raise TypeError; empty addresses and bad timeouts are refused."""
        with pytest.raises(TypeError, match="address"):
            request_port(b"@x")  # type: ignore[arg-type]
        with pytest.raises(portsafe.InvalidSettingError):
            request_port("@")
        with pytest.raises(portsafe.InvalidSettingError, match="timeout"):
            request_port("@x", timeout=0)

    def test_against_portpickers_own_portserver(self) -> None:
        """portsafe's client gets a port from Google's portserver.py."""
        script = portpicker_portserver()
        if script is None:
            pytest.skip("portpicker's portserver.py is not installed")
        pytest.importorskip("psutil", reason="portserver.py needs psutil")
        address = server_name()
        proc = subprocess.Popen(
            [sys.executable, str(script), "--portserver_address", address,
             "--portserver_static_pool", "23100-23119"],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(address, proc)
            first = request_port(address)
            second = request_port(address)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        assert first is not None
        assert 23100 <= first <= 23119
        assert second is not None
        assert second != first


class TestResolveOwner:
    def test_sender_is_the_claim(self) -> None:
        """A client claiming its own pid gets it, whatever its uid."""
        for uid in (ME, 65534, None):
            assert resolve_owner(os.getpid(), os.getpid(), uid) == os.getpid()

    @pytest.mark.skipif(not backend.PROC, reason="ancestry is read from /proc")
    def test_claim_for_an_ancestor_of_the_same_user(self) -> None:
        """`python -m portpicker $$` asks for its shell: an ancestor run by the sender's
        user (root's requests may name anyone's)."""
        parent_uid = int(Path(f"/proc/{os.getppid()}/status").read_text()
                         .split("Uid:")[1].split()[0])
        assert resolve_owner(os.getppid(), os.getpid(), parent_uid) == os.getppid()
        assert resolve_owner(os.getppid(), os.getpid(), 0) == os.getppid()

    @pytest.mark.skipif(not backend.PROC, reason="ancestry is read from /proc")
    def test_claim_for_another_users_ancestor_is_refused(self) -> None:
        """A sender of another uid than the ancestor's (or of an unknown uid) gets
        nothing for it: a stranger could otherwise make the server hold ports for a
        long-lived process of someone else's until it exits."""
        parent_uid = int(Path(f"/proc/{os.getppid()}/status").read_text()
                         .split("Uid:")[1].split()[0])
        other = 65534 if parent_uid != 65534 else 65533
        assert resolve_owner(os.getppid(), os.getpid(), other) is None
        assert resolve_owner(os.getppid(), os.getpid(), None) is None

    @pytest.mark.parametrize("peer", [None, "self"])
    def test_refusals(self, peer: str | None) -> None:
        """Zero, negative, pid 1 (an orphan's claim) and dead pids are refused."""
        peer_pid = os.getpid() if peer else None
        for claim in (0, -1, 1, _dead_pid()):
            assert resolve_owner(claim, peer_pid, 0 if peer else None) is None

    def test_process_identity_changes_with_the_process(self) -> None:
        """A live process has an identity; an exited one has none (a zombie neither,
        where /proc tells one)."""
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        ident = process_identity(child.pid)
        if not backend.PROC:  # kill(pid, 0) cannot tell a zombie: reap it first
            child.wait()
        for _ in range(400):
            if process_identity(child.pid) is None:
                break
            time.sleep(0.025)
        assert process_identity(child.pid) is None  # a zombie until waited for (/proc)
        child.wait()
        assert ident is None or ident[0] == child.pid


class TestPortServerBook:
    def test_grant_is_held_through_the_core(self) -> None:
        """A granted port is locked by the server, so local reservations avoid it."""
        (port,) = block = _free_block(1)
        server = PortServer(ports=block)
        try:
            reply = server.handle(b"%d\n" % os.getpid(), os.getpid(), ME)
            assert reply == b"%d\n" % port
            assert held_by(os.getpid(), [port], dict(os.environ)) == {port}
            with pytest.raises(portsafe.NoFreePortError):
                portsafe.reserve_port(ports=[port])
            assert server.handle(b"%d\n" % os.getpid(), os.getpid(), ME) is None  # none left
        finally:
            server.close()
        assert held_by(os.getpid(), [port], dict(os.environ)) == set()

    def test_reclaim_after_exit(self) -> None:
        """A grant comes back once its process is gone, and is handed out again."""
        lines: list[str] = []
        (port,) = block = _free_block(1)
        server = PortServer(ports=block, log=lines.append)
        child = _sleeper()
        try:
            assert server.handle(b"%d" % child.pid, None, None) == b"%d\n" % port
            assert server.handle(b"%d" % os.getpid(), os.getpid(), ME) is None
            child.kill()
            child.wait()
            assert server.handle(b"%d" % os.getpid(), os.getpid(), ME) == b"%d\n" % port
        finally:
            child.kill()
            child.wait()
            server.close()
        assert any(line.startswith(f"grant port {port} to pid") for line in lines)
        assert f"reclaim port {port} from pid {child.pid} (exited)" in lines

    def test_recycled_pid_does_not_keep_the_grant(self) -> None:
        """Same pid, other start time (a recycled pid): the grant is reclaimed."""
        (port,) = block = _free_block(1)
        server = PortServer(ports=block)
        try:
            assert server.handle(b"%d" % os.getpid(), os.getpid(), ME) == b"%d\n" % port
            ident = server.owner(port)
            assert ident is not None
            older = (ident[0], ident[1] - 1)  # as if granted to an earlier process
            server._owner_of[port] = older
            server._by_owner[older] = server._by_owner.pop(ident)
            assert server.reclaim() == [port]
        finally:
            server.close()

    @pytest.mark.parametrize("request_", [b"", b"abc", b"-5", b"1", b"9" * 30, b"\xff\xfe"])
    def test_bad_requests_get_nothing(self, request_: bytes) -> None:
        """Garbage, negative, pid 1 and absurd pids are refused and counted."""
        server = PortServer(ports=_free_block(2))
        assert server.handle(request_, os.getpid(), ME) is None
        assert server.refused == 1
        assert server.grants() == {}


needs_files = pytest.mark.skipif(_locks.table().passes_descriptors,
                                 reason="lock files: the server lets go, then the grantee locks")
needs_names = pytest.mark.skipif(not _locks.table().passes_descriptors,
                                 reason="names: the server passes the name's descriptor")


class TestHandOver:
    @needs_files
    def test_take_releases_the_servers_lock_for_its_grantee(self) -> None:
        """``take <port>`` from the grantee (lock files): the server lets go of the lock,
        keeps the port booked (not granted again), and says ok."""
        block = _free_block(2)
        server = PortServer(ports=block)
        try:
            port = int(server.handle(b"%d" % os.getpid(), os.getpid(), ME) or b"")
            table = _locks.table()
            assert table.holds(port)  # in-process server: its lock is ours
            assert server.handle(b"take %d" % port, os.getpid(), ME) == b"ok\n"
            assert not table.holds(port)
            assert server.grants() == {port: os.getpid()}
            other = int(server.handle(b"%d" % os.getpid(), os.getpid(), ME) or b"")
            assert other != port  # still booked, even though nobody locks it now
            assert server.handle(b"take %d" % port, os.getpid(), ME) == b"ok\n"  # idempotent
        finally:
            server.close()

    @needs_names
    def test_take_passes_the_names_descriptor(self) -> None:
        """``take <port>`` from the grantee (names): the answer is ``fd`` with the
        descriptor bound to the port's name, out of the server's table; the port stays
        booked; the name stays held (by that descriptor) until on_done closes it."""
        block = _free_block(2)
        server = PortServer(ports=block)
        try:
            port = int(server.handle(b"%d" % os.getpid(), os.getpid(), ME) or b"")
            table = _locks.table()
            reply = server.handle(b"take %d" % port, os.getpid(), ME)
            assert isinstance(reply, requestloop.Reply)
            assert reply.data == b"fd\n"
            (fd,) = reply.fds
            with socket.socket(fileno=os.dup(fd)) as sent:
                assert sent.getsockname() == names.name(port)
            assert not table.holds(port)  # out of the table, not closed
            assert not name_is_free(port)
            assert server.grants() == {port: os.getpid()}
            other = int(server.handle(b"%d" % os.getpid(), os.getpid(), ME) or b"")
            assert other != port  # still booked
            assert server.handle(b"take %d" % port, os.getpid(), ME) is None  # gone already
            assert reply.on_done is not None
            reply.on_done()  # the client closed the connection: the server's copy goes
            assert name_is_free(port)  # (no client here held a copy)
        finally:
            server.close()

    @needs_names
    def test_undelivered_take_is_held_again(self) -> None:
        """A hand-over whose reply never reached the client: the server holds the port
        by the same descriptor again; once the grant is gone, the descriptor is closed."""
        block = _free_block(1)
        server = PortServer(ports=block)
        try:
            port = int(server.handle(b"%d" % os.getpid(), os.getpid(), ME) or b"")
            reply = server.handle(b"take %d" % port, os.getpid(), ME)
            assert isinstance(reply, requestloop.Reply)
            assert reply.on_lost is not None
            reply.on_lost()
            assert _locks.table().holds(port)
            assert not name_is_free(port)
            again = server.handle(b"take %d" % port, os.getpid(), ME)  # and can be taken
            assert isinstance(again, requestloop.Reply)
            assert again.on_lost is not None
            server.revoke(port)  # the grant ends meanwhile
            again.on_lost()
            assert not _locks.table().holds(port)
            assert name_is_free(port)
        finally:
            server.close()

    @pytest.mark.parametrize("payload", [b"take 99999x", b"take ", b"take 1"])
    def test_take_of_what_is_not_yours_is_refused(self, payload: bytes) -> None:
        """Garbage, or a port not granted to the sender, gets no answer."""
        server = PortServer(ports=_free_block(1))
        try:
            assert server.handle(payload, os.getpid(), ME) is None
        finally:
            server.close()

    def test_take_from_another_process_is_refused(self) -> None:
        """Only the grantee may take a grant over."""
        (port,) = block = _free_block(1)
        server = PortServer(ports=block)
        child = _sleeper()
        try:
            assert server.handle(b"%d" % child.pid, child.pid, ME) == b"%d\n" % port
            assert server.handle(b"take %d" % port, os.getpid(), ME) is None
            assert server.handle(b"take %d" % port, None, None) is None
            assert _locks.table().holds(port)
        finally:
            child.kill()
            child.wait()
            server.close()

    def test_undelivered_grant_is_revoked(self) -> None:
        """revoke() (what the loop calls when a reply is lost) frees the port at once,
        unless it has changed hands since."""
        (port,) = block = _free_block(1)
        server = PortServer(ports=block)
        try:
            assert server.handle(b"%d" % os.getpid(), os.getpid(), ME) == b"%d\n" % port
            server.revoke(port, (os.getpid(), -1))  # another owner: not this grant
            assert server.grants() == {port: os.getpid()}
            server.revoke(port, server.owner(port))
            assert server.grants() == {}
            assert not _locks.table().holds(port)
        finally:
            server.close()


@contextlib.contextmanager
def _loop_serving(handler, **options):  # type: ignore[no-untyped-def]
    """A RequestLoop on a fresh unix socket, run in a thread; yields the address to
    connect to, and stops the loop and closes the socket on the way out."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address = server_name()
    try:
        listener.bind(unix_address(address))
        listener.listen()
        loop = requestloop.RequestLoop(listener, handler, max_request=32, **options)
        thread = threading.Thread(target=loop.run, kwargs={"handle_signals": False})
        thread.start()
        try:
            yield listener.getsockname()
        finally:
            loop.stop()
            thread.join()
    finally:
        listener.close()
        unlink_quietly(address)


def _client(address: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(address)
    return client


class TestRequestLoop:
    def test_reply_lost_when_the_client_left(self) -> None:
        """A reply to a client that closed before it was written is reported lost."""
        lost: list[bytes] = []
        answered = threading.Event()

        def handler(line: bytes, _pid: int | None, _uid: int | None) -> requestloop.Reply:
            answered.set()
            return requestloop.Reply(b"x" * (1 << 22), on_lost=lambda: lost.append(line))

        with _loop_serving(handler, timeout=5.0) as address:
            with _client(address) as client:
                client.sendall(b"123\n")
                assert answered.wait(10)
            for _ in range(200):
                if lost:
                    break
                time.sleep(0.025)
        assert lost == [b"123"]

    def test_request_waiting_at_the_deadline_is_served(self) -> None:
        """A request that arrives while the server is busy past the client's deadline is
        answered, not reset: the deadline is for silent clients, not the server's lag."""
        late: list[socket.socket] = []

        def handler(line: bytes, _pid: int | None, _uid: int | None) -> bytes:
            if line == b"slow":  # the server is busy past late's deadline, and late
                late[0].sendall(b"late\n")  # sends while it is
                time.sleep(0.5)
            return line + b"!\n"

        with (_loop_serving(handler, timeout=0.2) as address, _client(address) as waiting,
              _client(address) as slow):
            late.append(waiting)
            slow.sendall(b"slow\n")
            assert slow.recv(16) == b"slow!\n"
            assert waiting.recv(16) == b"late!\n"  # was: ECONNRESET

    def test_descriptors_go_with_the_reply_and_are_closed_after_the_client(self) -> None:
        """A reply with descriptors: the client receives them with the first bytes, and
        on_done (the server closing its copies) runs only once the client has closed
        its end, never before; on_lost is not called."""
        events: list[str] = []
        done = threading.Event()
        mine, theirs = socket.socketpair()

        def handler(line: bytes, _pid: int | None, _uid: int | None) -> bytes | requestloop.Reply:
            if line == b"ping":
                return b"pong\n"
            return requestloop.Reply(b"fd\n", fds=(theirs.fileno(),),
                                 on_lost=lambda: events.append("lost"),
                                 on_done=lambda: (events.append("done"), done.set()))

        try:
            with _loop_serving(handler, timeout=30.0) as address:
                with _client(address) as client:
                    client.sendall(b"take 1\n")
                    data, fds, _flags, _addr = socket.recv_fds(client, 64, 4)
                    assert data == b"fd\n"
                    assert len(fds) == 1
                    with socket.socket(fileno=fds[0]) as received:
                        received.sendall(b"through")  # the same socket as theirs
                        assert mine.recv(16) == b"through"
                    with _client(address) as later:  # the loop is done with the first
                        later.sendall(b"ping\n")
                        assert later.recv(16) == b"pong\n"
                    assert events == []  # the client has not closed yet
                assert done.wait(10)
            assert events == ["done"]
        finally:
            mine.close()
            theirs.close()

    def test_descriptors_of_a_reply_not_delivered_go_to_on_lost(self) -> None:
        """A client gone before its whole reply is written: on_lost, not on_done, runs
        (the server keeps, or takes back, what it meant to hand over)."""
        events: list[str] = []
        called = threading.Event()
        answered = threading.Event()
        mine, theirs = socket.socketpair()

        def handler(line: bytes, _pid: int | None, _uid: int | None) -> requestloop.Reply:
            answered.set()
            return requestloop.Reply(b"x" * (1 << 22), fds=(theirs.fileno(),),
                                 on_lost=lambda: (events.append("lost"), called.set()),
                                 on_done=lambda: (events.append("done"), called.set()))

        try:
            with _loop_serving(handler, timeout=30.0) as address:
                with _client(address) as client:
                    client.sendall(b"take 1\n")
                    assert answered.wait(10)
                assert called.wait(10)
            assert events == ["lost"]
        finally:
            mine.close()
            theirs.close()

    def test_silent_client_is_dropped_at_the_deadline(self) -> None:
        """A client that sends nothing is closed once its deadline passes."""
        with (_loop_serving(lambda line, pid, uid: b"no\n", timeout=0.2) as address,
              _client(address) as client):
            assert client.recv(16) == b""  # closed, without a reply

    def test_admit_refuses_at_accept(self) -> None:
        """A peer that admit() refuses is closed before it sends anything, and the
        handler never sees it."""
        seen: list[tuple[int | None, int | None]] = []

        def admit(pid: int | None, uid: int | None) -> bool:
            seen.append((pid, uid))
            return False

        with (_loop_serving(lambda line, pid, uid: b"no\n", timeout=5.0,
                            admit=admit) as address, _client(address) as client):
            assert client.recv(16) == b""  # closed without a reply
        assert seen[0][0] in (os.getpid(), None)


@pytest.mark.timeout(120)
class TestServe:
    def test_portpicker_clients_get_distinct_ports_and_reclaim(self, served) -> None:
        """portpicker.pick_unused_port from several processes: distinct while alive,
        reclaimed after they exit (the range is small enough to need reclaiming)."""
        pytest.importorskip("portpicker")
        address, _proc, ports_served, _log = served
        code = ("import os, sys, portpicker; "
                "print(portpicker.pick_unused_port(), flush=True); sys.stdin.read()")
        env = dict(os.environ, PORTSERVER_ADDRESS=address)
        for _wave in range(2):
            clients = [subprocess.Popen([sys.executable, "-c", code], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                       for _ in range(16)]
            try:
                ports = [int(c.stdout.readline()) for c in clients]  # type: ignore[union-attr]
                assert len(set(ports)) == 16
                assert set(ports) == set(ports_served)
                assert request_port(address) is None  # all 16 held by live pids
            finally:
                for c in clients:
                    c.communicate(b"")

    def test_bad_requests_cost_nothing(self, served) -> None:
        """Garbage, negative, pid 1, unknown pid, 1 MB, and a silent client get nothing,
        and the server keeps serving others meanwhile."""
        address, proc, _ports_served, _log = served
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            silent.connect(unix_address(address))
            for payload in (b"hello\n", b"-42\n", b"1\n", b"%d\n" % _dead_pid(),
                            b"7" * (1 << 20), b"\n"):
                assert _raw_request(address, payload) == b""
            assert request_port(address) is not None
        finally:
            silent.close()
        assert proc.poll() is None

    def test_sigterm_stops_cleanly(self, tmp_path: Path) -> None:
        """SIGTERM: exit 0, grants released, the path socket removed."""
        path = path_name()
        with private_ports(10, tmp_path) as (prefix, env, ports):
            proc = subprocess.Popen([*prefix, sys.executable, "-m", "portsafe", "serve",
                                     "--address", path, "--range", f"{ports[0]}-{ports[-1]}"],
                                    env=env)
            try:
                wait_listening(path, proc)
                port = request_port(path)
                assert port is not None
                assert held_by(proc.pid, [port], env) == {port}
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
        assert not os.path.exists(path)

    def test_address_taken_is_a_clear_error(self, served, tmp_path: Path) -> None:
        """A second server on the same address exits 4 and says what to do."""
        address, _proc, _ports_served, _log = served
        done = subprocess.run([sys.executable, "-m", "portsafe", "serve", "--address", address],
                              env=private_env(tmp_path), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 4
        assert "already in use" in done.stderr
        assert "--address" in done.stderr

    def test_stale_path_socket_is_replaced(self, tmp_path: Path) -> None:
        """A socket file left by a killed server does not block a new one."""
        path = str(tmp_path / "stale.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(path)  # closed without unlinking, as after kill -9
        assert os.path.exists(path)
        listener = bind_unix(path)
        listener.close()

    def test_path_socket_is_open_to_every_user(self, served) -> None:
        """A path socket is connectable by all, as an abstract name is: the server
        decides per request, from the sender's credentials."""
        address, _proc, _ports_served, _log = served
        assert os.stat(address).st_mode & 0o777 == 0o666

    def test_verbose_logs_grant_and_reclaim(self, served) -> None:
        """--verbose writes one line per grant and per reclaim (once a second)."""
        address, proc, ports_served, log = served
        client = subprocess.run(
            [sys.executable, "-c",
             ("import sys; from portsafe._core.serverclient import request_port; "
             f"print(request_port({address!r}))")],
            capture_output=True, text=True, timeout=60, check=True)
        port = int(client.stdout)
        wait_for_line(log, f"reclaim port {port} from pid", proc)
        assert f"grant port {port} to pid" in log.read_text()
        assert port not in held_by(proc.pid, ports_served, os.environ.copy())

    @pytest.mark.skipif(not backend.PROC or shutil.which("unshare") is None,
                        reason="needs pid namespaces (unshare) and /proc to see them")
    def test_container_init_gets_a_port(self, served) -> None:
        """A client that is pid 1 in its own pid namespace sends "1" and still gets one."""
        address, _proc, ports_served, _log = served
        code = ("import os; from portsafe._core.serverclient import request_port; "
                f"print(os.getpid(), request_port({address!r}))")
        done = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make a pid namespace here: {done.stderr.strip()[-200:]}")
        pid, port = done.stdout.split()
        assert pid == "1"
        assert int(port) in ports_served

    def test_abstract_address_without_abstract_names_is_refused(self, monkeypatch) -> None:
        """Where there are no abstract names (macOS, the BSDs, the file backend's test
        channel), ``@name`` is a clear error for the server, and "no server" for a
        client, which does not even connect."""
        from portsafe import _unixsock as _unixserver
        from portsafe._core import serverclient as _server_client

        listener = None
        if LINUX:  # something really listens there: the client must not reach it
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind("\0portsafe-test-no-abstract")
            listener.listen()
        try:
            monkeypatch.setattr(backend, "ABSTRACT", False)
            with pytest.raises(portsafe.InvalidSettingError, match="abstract"):
                _unixserver.bind_unix("@portsafe-test-nowhere")
            assert _server_client.request_grant("@portsafe-test-no-abstract",
                                                timeout=1.0) is None
            if listener is not None:
                listener.setblocking(False)
                with pytest.raises(BlockingIOError):
                    listener.accept()
        finally:
            if listener is not None:
                listener.close()

    def test_default_address_follows_abstract_names(self, monkeypatch) -> None:
        """portpicker's @unittest-portserver where there are abstract names; elsewhere a
        socket in a directory of this user's that only it may write."""
        if backend.ABSTRACT:
            assert _server.default_address() == _server.DEFAULT_ADDRESS
        monkeypatch.setattr(backend, "ABSTRACT", False)
        path = _server.default_address()
        assert path == f"/tmp/portsafe-portserver-{os.getuid()}/portserver.sock"
        where = os.stat(os.path.dirname(path))
        assert where.st_uid == os.getuid()
        assert where.st_mode & 0o022 == 0


@pytest.fixture
def served_wide(tmp_path: Path):
    """``portsafe serve`` on 400 ports of its own, on a path socket. Yields ``(address,
    process, ports, env)``."""
    address = path_name()
    with (private_ports(400, tmp_path) as (prefix, env, ports),
          serving(["--range", f"{ports[0]}-{ports[-1]}"], env, tmp_path / "serve.log",
                  address, prefix) as proc):
        yield address, proc, ports, env


@pytest.mark.timeout(180)
class TestBurst:
    @pytest.mark.parametrize("clients", [120, 300])
    def test_every_grant_is_delivered_or_released(self, served_wide, clients: int) -> None:
        """Many simultaneous requests (each giving up after 2 s, as portsafe's client
        does): the ports the server holds afterwards are exactly the ones delivered."""
        address, proc, ports, env = served_wide
        got: list[int | None] = [None] * clients
        start = threading.Barrier(clients)

        def one(index: int) -> None:
            start.wait()
            got[index] = request_port(address, timeout=2.0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        delivered = [port for port in got if port is not None]
        assert len(delivered) == len(set(delivered)), "one port delivered twice"
        held: set[int] = set()
        for _ in range(100):  # connections the clients gave up on may still be queued
            held = held_by(proc.pid, ports, env)
            if held == set(delivered):
                break
            time.sleep(0.1)
        assert held - set(delivered) == set(), "grants held for nobody (undelivered)"
        assert set(delivered) <= held, "delivered ports the server does not hold"
        assert delivered, "the server served nobody"


class TestOwners:
    @pytest.mark.skipif(not LINUX, reason="pid 2 is Linux's kthreadd")
    def test_pids_that_never_exit_do_not_exhaust_the_pool(self, tmp_path: Path) -> None:
        """Requests for pid 2 (a kernel thread) and for the server's own pid are
        refused, so a later real client still gets a port."""
        address = path_name()
        with (private_ports(2, tmp_path) as (prefix, env, block),
              serving(["--range", f"{block[0]}-{block[-1]}"], env, tmp_path / "serve.log",
                      address, prefix) as proc):
            for claim in (2, proc.pid):
                for _ in range(2):
                    assert _raw_request(address, b"%d\n" % claim) == b""
            assert request_port(address) in block

    def test_one_owner_cannot_take_the_whole_pool(self) -> None:
        """Beyond max_per_owner grants, one process is refused; others are served."""
        block = _free_block(4)
        server = PortServer(ports=block, max_per_owner=2)
        child = _sleeper()
        try:
            me = b"%d" % os.getpid()
            assert server.handle(me, os.getpid(), ME) is not None
            assert server.handle(me, os.getpid(), ME) is not None
            assert server.handle(me, os.getpid(), ME) is None
            assert server.handle(b"%d" % child.pid, child.pid, ME) is not None
        finally:
            child.kill()
            child.wait()
            server.close()

    def test_claim_for_an_unrelated_process_is_refused(self) -> None:
        """A sender may ask for itself or an ancestor (``portpicker $$``), not for a
        process it is unrelated to, whose exit it cannot vouch for."""
        child = _sleeper()
        try:
            assert resolve_owner(child.pid, os.getpid(), 0) is None  # not even root's
            if backend.PROC:
                assert resolve_owner(os.getppid(), os.getpid(), 0) == os.getppid()
        finally:
            child.kill()
            child.wait()

    def test_reclaim_is_not_per_grant_per_request(self, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
        """With 200 grants to one live process, one more request looks at a few
        processes, not at every grant."""
        server = PortServer(ports=_free_block(220))
        try:
            me = b"%d" % os.getpid()
            for _ in range(200):
                assert server.handle(me, os.getpid(), ME) is not None
            calls: list[int] = []
            real = process_identity

            def counting(pid: int) -> tuple[int, int] | None:
                calls.append(pid)
                return real(pid)

            monkeypatch.setattr(_server, "process_identity", counting)
            assert server.handle(me, os.getpid(), ME) is not None
            assert len(calls) <= 4
        finally:
            server.close()


def _ask_as(address: str, claims: list[int | str]) -> list[bytes]:
    """Send each claim (a pid, or "self", or "parent") as one request; the answers."""
    answers = []
    for claim in claims:
        pid = {"self": os.getpid(), "parent": os.getppid()}.get(claim, claim)  # type: ignore[call-overload]
        answers.append(_raw_request(address, b"%d\n" % pid))
    return answers


@pytest.mark.timeout(120)
@pytest.mark.skipif(not LINUX or os.geteuid() != 0,
                    reason="needs root to run a client as uid 65534 on Linux")
class TestOtherUsers:
    def test_no_grants_for_another_users_ancestor(self, served, tmp_path: Path) -> None:
        """A uid-65534 client of root's server asks for its parent (this test process, a
        long-lived root process as an sshd session or a CI agent would be): refused, and
        nothing is held for it; for itself it is served. Its own (uid-65534) parent is
        an ancestor it may ask for."""
        address, server, ports, log = served
        read_end, write_end = os.pipe()

        def work() -> None:
            answers = _ask_as(address, ["parent", "self"])
            if backend.PROC:  # a child of ours, of our uid, asking for us: allowed
                child = os.fork()
                if child == 0:
                    os.write(write_end, json.dumps(
                        [a.decode() for a in _ask_as(address, ["parent"])]).encode() + b"\n")
                    os._exit(0)
                os.waitpid(child, 0)
            else:
                os.write(write_end, b"[]\n")
            os.write(write_end, json.dumps([a.decode() for a in answers]).encode() + b"\n")

        with as_nobody(work) as nobody:
            os.close(write_end)
            with os.fdopen(read_end) as results:
                by_child = json.loads(results.readline())
                parent_answer, self_answer = json.loads(results.readline())
            assert parent_answer == "", "granted for another user's process"
            assert self_answer.strip()
            assert int(self_answer) in ports
            refused = f"refuse request for pid {os.getpid()} (sender pid {nobody}, uid {NOBODY})"
            wait_for_line(log, refused, server)
            granted = {int(self_answer)}
            if backend.PROC:
                (answer,) = by_child
                assert answer.strip()
                assert int(answer) in ports
                assert f"to pid {nobody} " in log.read_text()  # the grandchild's ask
                granted.add(int(answer))
            assert held_by(server.pid, ports, private_env(tmp_path)) == granted  # no more
